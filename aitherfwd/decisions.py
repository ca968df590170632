"""Firewall decisions as audit records (layer L1, pure).

Owns: turning what the kernel reported over NFLOG (a `Denial`: a denied packet, a
connection-limit refusal, a SYN-flood drop, an outbound refusal, or a new connection an
allow rule let in under `log_allowed`; on the forward path with the published port and
direction `forward`) and what `/v1/evaluate` answered into `decision` records
(audit_records.py) — verdict, rule, zone, service, reason, endpoints — and the `Sampler`
that bounds them: a token bucket per rule at `settings.audit_decisions` lines per
second (burst the same), so a flood against one rule cannot fill the disk nor hide the
decisions of the others. Time is an argument; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from aitherfwd import zones as zoning
from aitherfwd.audit_records import Decision, decision
from aitherfwd.dynamic.detect import Denial
from aitherfwd.evaluator import Verdict
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Action, IPAddress, Policy, Protocol

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
MAX_KEYS = 4096  # rules sampled separately at most; beyond, the least recently used goes
_VERBS = {"allow": "allows", "deny": "denies", "reject": "rejects"}
_DEFAULTS = ("default", "-", "egress-default")

__all__ = ["Decision", "Sampler", "from_denial", "from_verdict"]


class Sampler:
    """Token buckets per key (a rule): `rate` per second, burst `rate`, full when new."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.taken = 0
        self.dropped = 0

    def take(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            self.dropped += 1
            return False
        tokens, at = self._buckets.pop(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + max(0.0, now - at) * self.rate)
        ok = tokens >= 1
        self._buckets[key] = (tokens - 1 if ok else tokens, now)
        if len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        if ok:
            self.taken += 1
        else:
            self.dropped += 1
        return ok


def protocol_name(number: int) -> str:
    return PROTOCOL_NAMES.get(number, str(number))


def service_of(policy: Policy | None, protocol: str, port: int | None) -> str | None:
    """The first service of the registry serving `port` over `protocol`."""
    if policy is None or port is None or protocol not in ("tcp", "udp"):
        return None
    for s in policy.services:
        if s.protocol in (Protocol(protocol), Protocol.ANY) and any(port in r for r in s.ports):
            return s.name
    return None


_KIND_VERDICTS = {n.KIND_ALLOWED: "allow", n.KIND_CONNLIMIT: "reject", n.KIND_SYNFLOOD: "deny"}


def _rule_action(policy: Policy | None, d: Denial) -> str:
    if d.kind in _KIND_VERDICTS:
        return _KIND_VERDICTS[d.kind]
    if policy is None:
        return "deny"
    if d.kind == n.KIND_EGRESS:
        eg = policy.egress
        named = {r.name: r.action for r in eg.rules} if eg is not None else {}
        if d.rule == "default":
            return str(eg.default_action if eg is not None else Action.DENY)
        return str(named.get(d.rule, Action.DENY))
    if d.rule == "default":
        return str(policy.settings.default_policy)
    named = {r.name: r.action for r in policy.rules}
    return str(named.get(d.rule, Action.DENY))


def _reason(d: Denial, verdict: str, zone: str | None, what: str, policy: Policy | None) -> str:
    st = policy.settings if policy is not None else None
    if d.kind == n.KIND_CONNLIMIT:
        limit = st.max_connections_per_ip if st else "?"
        return f"over max_connections_per_ip ({limit}) from {d.source}"
    if d.kind == n.KIND_SYNFLOOD:
        limit = st.syn_flood_threshold if st else "?"
        return f"SYNs over syn_flood_threshold ({limit}/s) from {d.source}"
    if d.kind == n.KIND_EGRESS:
        if d.rule in _DEFAULTS:
            return f"outbound {what} to {d.dest}: no rule matched; egress default {verdict}"
        return f"outbound: rule '{d.rule}' {_VERBS.get(verdict, verdict)} {what} to {d.dest}"
    if d.rule in _DEFAULTS:
        return f"no rule matched; default policy {verdict}"
    origin = f"zone {zone}" if zone is not None else f"{d.source} (in no zone)"
    return f"rule '{d.rule}' {_VERBS.get(verdict, verdict)} {what} from {origin}"


def _direction(d: Denial) -> str:
    """`forward` for routed traffic (to, from or between containers), whatever its kind."""
    if d.forward:
        return "forward"
    return "outbound" if d.kind == n.KIND_EGRESS else "inbound"


def from_denial(d: Denial, policy: Policy | None) -> Decision:
    """A kernel report as a decision record (the policy in force names zone and service)."""
    proto = protocol_name(d.protocol)
    port = d.port or None
    what = f"{proto}/{port}" if port is not None else proto
    outbound = d.kind == n.KIND_EGRESS
    zone = None if outbound or policy is None else zoning.classify(policy.zones, d.source)
    verdict = _rule_action(policy, d)
    reason = _reason(d, verdict, zone, what, policy)
    if d.forward and outbound:  # a container's outbound connection (as evaluate says it)
        reason = f"from containers: {reason}"
    return decision(verdict)(
        verdict=verdict,
        rule_name=None if d.rule in _DEFAULTS else d.rule,
        zone=zone,
        source_ip=str(d.source),
        dest_service=None if outbound else service_of(policy, proto, port),
        reason=reason,
        latency_us=None,
        source_port=d.sport or None,
        dest_ip=str(d.dest) if d.dest is not None else None,
        dest_port=port,
        protocol=proto,
        direction=_direction(d),
        kind=d.kind,
        origin="kernel",
    )


def from_verdict(
    policy: Policy | None,
    verdict: Verdict,
    *,
    source: IPAddress,
    dest: IPAddress | None,
    protocol: Protocol,
    port: int | None,
    direction: str,
    latency_us: float,
) -> Decision:
    """An answer of /v1/evaluate as a decision record."""
    proto = str(protocol)
    return decision(verdict.verdict)(
        verdict=verdict.verdict,
        rule_name=verdict.rule,
        zone=verdict.zone,
        source_ip=str(source),
        dest_service=service_of(policy, proto, port) if direction == "inbound" else None,
        reason=verdict.reason,
        latency_us=latency_us,
        source_port=None,
        dest_ip=str(dest) if dest is not None else None,
        dest_port=port,
        protocol=proto,
        direction=direction,
        kind="evaluate",
        origin="evaluate",
    )
