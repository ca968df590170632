"""Every record the audit trail holds, as one typed schema (layer L1, pure).

Owns: one frozen, slotted dataclass per kind of audit line, each with a class-level
`event` (the line's `event`) and `action` (the OCSF-style `action`); `as_json(record,
now)`, the JSON object written for it (`timestamp`, `event`, `action`, then the record's
fields in declaration order — the order docs/audit.md and the kernel tests read — then the
OCSF attributes computed from them, audit_ocsf.py). Decisions are OCSF Network Activity
(the daemon's), HTTP Activity (the ASGI middleware's) or API Activity (the tool-call
gateway's), every other record a state change (Detection Finding).
`aitherfwd/audit_check.py` checks written lines against these types.

Two record types may share an event name when the daemon writes two shapes of it
(`drift_repaired` after a table repair or an element repair).

Must not import: adapters, the daemon, or anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import ClassVar

from aitherfwd import audit_ocsf as ocsf

Actor = Mapping[str, int]  # uid, gid, pid of an API caller (SO_PEERCRED)
Problem = Mapping[str, object]  # one policy diagnostic, as `Diagnostic.as_dict()` gives it


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """The base of every record; never written itself. `ocsf_activity`: the OCSF Detection
    Finding activity of a state change (audit_ocsf.py): Create unless a record says
    otherwise."""

    event: ClassVar[str]
    action: ClassVar[str]
    ocsf_activity: ClassVar[int] = ocsf.CREATE


# --- the daemon's life ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonStarted(AuditRecord):
    event: ClassVar[str] = "daemon_started"
    action: ClassVar[str] = "start"
    generation: int
    policy_sha256: str
    adopted: bool
    blocks: int


@dataclass(frozen=True, slots=True)
class DaemonStopped(AuditRecord):
    event: ClassVar[str] = "daemon_stopped"
    action: ClassVar[str] = "stop"
    ocsf_activity: ClassVar[int] = ocsf.CLOSE
    generation: int


@dataclass(frozen=True, slots=True)
class StoreRecovered(AuditRecord):
    event: ClassVar[str] = "store_recovered"
    action: ClassVar[str] = "recover"
    reason: str


@dataclass(frozen=True, slots=True)
class ReloadApplied(AuditRecord):
    event: ClassVar[str] = "reload_applied"
    action: ClassVar[str] = "reload"
    ocsf_activity: ClassVar[int] = ocsf.UPDATE
    trigger: str
    generation: int
    policy_sha256: str
    ruleset_sha256: str
    kernel_changed: bool


@dataclass(frozen=True, slots=True)
class ReloadRejected(AuditRecord):
    event: ClassVar[str] = "reload_rejected"
    action: ClassVar[str] = "reject"
    trigger: str
    errors: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class DriftRepaired(AuditRecord):
    """The table differed from the generation and was applied again."""

    event: ClassVar[str] = "drift_repaired"
    action: ClassVar[str] = "repair"
    ocsf_activity: ClassVar[int] = ocsf.UPDATE
    generation: int
    table_existed: bool


@dataclass(frozen=True, slots=True)
class ElementsRepaired(AuditRecord):
    """The static table was intact but set elements were missing and were restored."""

    event: ClassVar[str] = "drift_repaired"
    action: ClassVar[str] = "repair"
    ocsf_activity: ClassVar[int] = ocsf.UPDATE
    generation: int
    elements_restored: int


# --- blocks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Blocked(AuditRecord):
    event: ClassVar[str] = "blocked"
    action: ClassVar[str] = "block"
    source_ip: str | None  # the first address of the batch
    count: int
    source: str
    addresses: tuple[str, ...]  # at most the first 100
    ttl: int | None
    reason: str | None
    actor: Actor | None


@dataclass(frozen=True, slots=True)
class Unblocked(AuditRecord):
    event: ClassVar[str] = "unblocked"
    action: ClassVar[str] = "unblock"
    ocsf_activity: ClassVar[int] = ocsf.CLOSE
    source_ip: str
    reason: str
    source: str
    actor: Actor | None


@dataclass(frozen=True, slots=True)
class BlockExpired(AuditRecord):
    event: ClassVar[str] = "block_expired"
    action: ClassVar[str] = "expire"
    ocsf_activity: ClassVar[int] = ocsf.CLOSE
    source_ip: str
    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class _Escalation(AuditRecord):
    source_ip: str
    threat: str
    severity: str
    block_number: int
    ttl: int | None
    reason: str
    actor: Actor | None


@dataclass(frozen=True, slots=True)
class EscalationTemporary(_Escalation):
    event: ClassVar[str] = "escalation_temporary"
    action: ClassVar[str] = "escalate"


@dataclass(frozen=True, slots=True)
class EscalationPermanent(_Escalation):
    event: ClassVar[str] = "escalation_permanent"
    action: ClassVar[str] = "permanent"


@dataclass(frozen=True, slots=True)
class AuditSummary(AuditRecord):
    """Stands for `count` automated records of one kind folded by the audit budget
    (daemon/audit_budget.py) during a flood: escalations of one reporter, `blocked` of the
    reputation ladder or the fleet, `block_expired` of one block source."""

    event: ClassVar[str] = "audit_summary"
    action: ClassVar[str] = "summarize"
    summarized: str  # the event of the records it stands for ("mixed" under the overflow)
    source: str  # the reporter ("uid 1001", "in-process") or the block source
    count: int  # escalations or blocks folded
    addresses: tuple[str, ...]  # the first 100 of them
    since: str  # RFC 3339 time of the first one folded


def escalation(kind: str) -> type[_Escalation]:
    """The record for a reputation decision's kind ("temporary" | "permanent")."""
    return EscalationPermanent if kind == "permanent" else EscalationTemporary


# --- the control socket --------------------------------------------------------------------


# Both are aggregated per peer (daemon/rejections.py): a line stands for `count` refusals of
# its actor's uid, the last of which it describes. access_denied is a security event and
# goes to the audit trail; request_rejected is request noise and goes to its own file.


@dataclass(frozen=True, slots=True)
class AccessDenied(AuditRecord):
    event: ClassVar[str] = "access_denied"
    action: ClassVar[str] = "deny"
    verdict: str  # always "deny"
    actor: Actor
    method: str  # "" when the peer, having no role at all, was refused at connect
    path: str  # at most 128 characters
    role: str  # the role the route needs; "any" for a peer with no role
    count: int = 1


@dataclass(frozen=True, slots=True)
class RequestRejected(AuditRecord):
    event: ClassVar[str] = "request_rejected"
    action: ClassVar[str] = "reject"
    method: str
    path: str  # at most 128 characters
    status: int
    code: str
    reason: str  # at most 200 characters
    actor: Actor
    count: int = 1


# --- decisions (OCSF Network Activity) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision(AuditRecord):
    """One firewall decision: a packet the kernel denied (sampled per rule), a new
    connection a rule allowed under `log_allowed`, or an answer of /v1/evaluate. The seed's
    fields first, then where and what. `origin`: kernel | evaluate."""

    event: ClassVar[str] = "decision"
    verdict: str  # allow | deny | reject | rate_limited (our names; docs/audit.md)
    rule_name: str | None  # None: the default policy or a built-in step
    zone: str | None  # the source's zone (inbound); None outbound or in no zone
    source_ip: str
    dest_service: str | None  # the policy's service on that port, if any
    reason: str
    latency_us: float | None  # measured for evaluate; None for the kernel's
    source_port: int | None
    dest_ip: str | None
    dest_port: int | None
    protocol: str  # tcp, udp, icmp, ipv6-icmp, or the IP protocol number
    direction: str  # inbound | outbound | forward
    kind: str  # denied | allowed | connlimit | synflood | egress | evaluate
    origin: str


@dataclass(frozen=True, slots=True)
class DecisionAllowed(Decision):
    action: ClassVar[str] = "allowed"


@dataclass(frozen=True, slots=True)
class DecisionDenied(Decision):
    action: ClassVar[str] = "denied"


def decision(verdict: str) -> type[Decision]:
    """The record for a verdict: allowed, or denied (deny, reject, rate_limited)."""
    return DecisionAllowed if verdict == "allow" else DecisionDenied


@dataclass(frozen=True, slots=True)
class HttpDecision(AuditRecord):
    """One decision of the ASGI middleware on an HTTP or WebSocket request (OCSF HTTP
    Activity), seed 000's fields first. Sampled per rule and source (asgi/auditing.py): a
    line stands for `count` decisions of its rule, verdict and source since the previous
    line of theirs, the last of which it describes (OCSF's `count`)."""

    event: ClassVar[str] = "decision"
    verdict: str  # allow | deny | reject | rate_limited
    rule_name: str | None  # None: the default policy, a built-in step or the middleware's own
    zone: str | None  # the client's zone
    source_ip: str  # the client judged (behind trusted proxies: from the forwarding header)
    dest_service: str | None  # the policy's service on the judged port, if any
    reason: str
    latency_us: float  # the decision, client address included
    dest_ip: str | None  # the server's address, when the server says
    dest_port: int  # the port judged
    method: str  # the request's method ("GET" for a WebSocket), at most 16 characters
    path: str  # at most 256 characters
    status: int | None  # the answer when refused (403, 429, 400, 503); None when passed on
    request_id: str | None  # the refusal's X-Request-Id
    peer_ip: str  # the TCP peer (a proxy, when the client came from a forwarding header)
    kind: str  # http | websocket
    origin: str  # always "middleware"
    count: int = 1


@dataclass(frozen=True, slots=True)
class HttpDecisionAllowed(HttpDecision):
    action: ClassVar[str] = "allowed"


@dataclass(frozen=True, slots=True)
class HttpDecisionDenied(HttpDecision):
    action: ClassVar[str] = "denied"


def http_decision(verdict: str) -> type[HttpDecision]:
    return HttpDecisionAllowed if verdict == "allow" else HttpDecisionDenied


# --- egress: names and sandbox grants ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EgressDnsChanged(AuditRecord):
    event: ClassVar[str] = "egress_dns_changed"
    action: ClassVar[str] = "egress_dns_changed"
    ocsf_activity: ClassVar[int] = ocsf.UPDATE
    host: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EgressDnsFailed(AuditRecord):
    event: ClassVar[str] = "egress_dns_failed"
    action: ClassVar[str] = "egress_dns_failed"
    host: str
    reason: str


# --- country and list sets (daemon/geosets.py) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class GeoRefreshed(AuditRecord):
    event: ClassVar[str] = "geo_refreshed"
    action: ClassVar[str] = "geo_refreshed"
    source: str  # "geoip" or "list:<name>"
    path: str
    elements: int  # ranges in the kernel for this source, after
    added: int
    removed: int
    bad_lines: int


@dataclass(frozen=True, slots=True)
class GeoRefreshFailed(AuditRecord):
    event: ClassVar[str] = "geo_refresh_failed"
    action: ClassVar[str] = "geo_refresh_failed"
    source: str
    path: str
    reason: str  # the last good contents stay in the kernel


@dataclass(frozen=True, slots=True)
class SandboxGranted(AuditRecord):
    event: ClassVar[str] = "sandbox_granted"
    action: ClassVar[str] = "sandbox_granted"
    destination: str
    addresses: tuple[str, ...]
    scope: str
    ttl: int
    ports: tuple[int, ...]
    capped: bool
    actor: Actor


@dataclass(frozen=True, slots=True)
class SandboxRefused(AuditRecord):
    event: ClassVar[str] = "sandbox_refused"
    action: ClassVar[str] = "sandbox_refused"
    destination: str
    scope: str
    reason: str
    actor: Actor


@dataclass(frozen=True, slots=True)
class SandboxRevoked(AuditRecord):
    event: ClassVar[str] = "sandbox_revoked"
    action: ClassVar[str] = "sandbox_revoked"
    ocsf_activity: ClassVar[int] = ocsf.CLOSE
    destination: str
    addresses: tuple[str, ...]
    actor: Actor


@dataclass(frozen=True, slots=True)
class SandboxFollowed(AuditRecord):
    """A granted host name resolved to a new address, which was granted too."""

    event: ClassVar[str] = "sandbox_followed"
    action: ClassVar[str] = "sandbox_followed"
    ocsf_activity: ClassVar[int] = ocsf.UPDATE
    destination: str
    host: str | None
    scope: str


@dataclass(frozen=True, slots=True)
class SandboxExpired(AuditRecord):
    event: ClassVar[str] = "sandbox_expired"
    action: ClassVar[str] = "sandbox_expired"
    ocsf_activity: ClassVar[int] = ocsf.CLOSE
    destination: str
    scope: str


# --- the tool-call gateway (aitherfwd gateway; docs/gateway.md) ---------------------------


@dataclass(frozen=True, slots=True)
class ToolDecision(AuditRecord):
    """One decision on a tool call (OCSF API Activity). Seed 000's decision fields first
    (no `zone`: the gateway knows no zones), then seed 003's audit fields (`tool`,
    `params`, `allowed`; its `reason` is the one above), then ours. Rate-limited calls are
    sampled per entry, agent and address: a line stands for `count` of them."""

    event: ClassVar[str] = "decision"
    verdict: str  # allow | deny | rate_limited
    rule_name: str  # the allow or deny entry that decided (as written), or "default"
    source_ip: str | None  # the caller's peer address (None on a Unix socket)
    dest_service: str  # the tool, as the caller named it (at most 512 characters)
    reason: str  # the answer's reason (the seed's wording); for an allow, which entry
    latency_us: float  # the decision, network grant included
    tool: str
    params: Mapping[str, object]
    allowed: bool
    agent: str  # the caller's name (per-agent tokens), else "anonymous"
    reason_class: str  # the bounded class the metrics count by
    destination: str  # "host:port" opened by a sandbox grant, else ""
    origin: str  # always "gateway"
    count: int = 1  # rate-limited calls this line stands for (audit_sample.py)


@dataclass(frozen=True, slots=True)
class ToolDecisionAllowed(ToolDecision):
    action: ClassVar[str] = "allowed"


@dataclass(frozen=True, slots=True)
class ToolDecisionDenied(ToolDecision):
    action: ClassVar[str] = "denied"


def tool_decision(allowed: bool) -> type[ToolDecision]:
    return ToolDecisionAllowed if allowed else ToolDecisionDenied


@dataclass(frozen=True, slots=True)
class GatewayReloaded(AuditRecord):
    event: ClassVar[str] = "gateway_reload"
    action: ClassVar[str] = "gateway_reload"
    trigger: str
    accepted: bool
    policy_sha256: str
    errors: tuple[Problem, ...]


# --- the fleet (daemon/fleet.py) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetBus(AuditRecord):
    """The fleet's bus came up or went away (the host enforces alone meanwhile)."""

    event: ClassVar[str] = "fleet_bus"
    action: ClassVar[str] = "fleet_bus"
    state: str  # connected | disconnected
    server: str
    fleet: str


@dataclass(frozen=True, slots=True)
class FleetSkipped(AuditRecord):
    """A decision of another host that this host refused: local rules win."""

    event: ClassVar[str] = "fleet_skipped"
    action: ClassVar[str] = "fleet_skipped"
    source_ip: str
    origin: str
    op: str  # block | unblock
    why: str  # protected | local
    detail: str


RECORDS: tuple[type[AuditRecord], ...] = (
    DaemonStarted,
    DaemonStopped,
    StoreRecovered,
    ReloadApplied,
    ReloadRejected,
    DriftRepaired,
    ElementsRepaired,
    Blocked,
    Unblocked,
    BlockExpired,
    EscalationTemporary,
    EscalationPermanent,
    AuditSummary,
    AccessDenied,
    RequestRejected,
    DecisionAllowed,
    DecisionDenied,
    HttpDecisionAllowed,
    HttpDecisionDenied,
    EgressDnsChanged,
    EgressDnsFailed,
    GeoRefreshed,
    GeoRefreshFailed,
    SandboxGranted,
    SandboxRefused,
    SandboxRevoked,
    SandboxFollowed,
    SandboxExpired,
    ToolDecisionAllowed,
    ToolDecisionDenied,
    GatewayReloaded,
    FleetBus,
    FleetSkipped,
)

BY_EVENT: dict[str, tuple[type[AuditRecord], ...]] = {}
for _cls in RECORDS:
    BY_EVENT[_cls.event] = (*BY_EVENT.get(_cls.event, ()), _cls)

HEADER = ("timestamp", "event", "action")


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def as_json(record: AuditRecord, now: float) -> dict[str, object]:
    """The JSON object of one audit line: the header, then the fields in their order."""
    obj: dict[str, object] = {
        "timestamp": rfc3339(now),
        "event": record.event,
        "action": record.action,
    }
    for f in fields(record):
        obj[f.name] = _plain(getattr(record, f.name))
    obj.update(ocsf_of(type(record), obj, ocsf.epoch_ms(str(obj["timestamp"]))))
    return obj


def ocsf_of(cls: type[AuditRecord], obj: Mapping[str, object], time_ms: int) -> dict[str, object]:
    """The OCSF attributes of a line of record type `cls` whose fields are `obj`."""
    if issubclass(cls, Decision):
        return ocsf.network(obj, time_ms)
    if issubclass(cls, HttpDecision):
        return ocsf.http(obj, time_ms)
    if issubclass(cls, ToolDecision):
        return ocsf.api(obj, time_ms)
    return ocsf.finding(cls.event, cls.action, cls.ocsf_activity, time_ms)
