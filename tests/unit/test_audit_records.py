"""The audit schema: every record type writes exactly the line the daemon wrote before
records were typed (same keys, order and values), every written line validates against the
schema, and nothing in the package audits with an event string or free-form fields."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest

from aitherfwd import audit_ocsf as ocsf
from aitherfwd import audit_records as ar
from aitherfwd.adapters.audit import AuditLog, encode
from aitherfwd.audit_check import validate_line
from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.policy.model import Severity
from aitherfwd.testing import fake_daemon

PKG = Path(__file__).resolve().parents[2] / "aitherfwd"
NOW = 1_800_000_000.25
ACTOR = {"uid": 1000, "gid": 1000, "pid": 4242}

# event → OCSF-style action, as docs/daemon.md lists them (others: the event name itself)
OLD_ACTIONS = {
    "blocked": "block",
    "audit_summary": "summarize",  # new with the audit budget: no line from before
    "unblocked": "unblock",
    "block_expired": "expire",
    "escalation_temporary": "escalate",
    "escalation_permanent": "permanent",
    "reload_applied": "reload",
    "reload_rejected": "reject",
    "request_rejected": "reject",
    "access_denied": "deny",
    "decision": "denied",
    "daemon_started": "start",
    "daemon_stopped": "stop",
    "drift_repaired": "repair",
    "store_recovered": "recover",
}


# (record, the event and keyword fields the daemon passed to `write` before this schema)
def _sample(
    cls: type[ar.AuditRecord], event: str, fields: dict[str, object], **defaults: object
) -> tuple[ar.AuditRecord, str, dict[str, object]]:
    """A record made of `fields`, and the fields its line holds (with the record's own
    defaults after them)."""
    return cls(**fields), event, {**fields, **defaults}


SAMPLES: list[tuple[ar.AuditRecord, str, dict[str, object]]] = [
    (
        ar.DaemonStarted(generation=1, policy_sha256="ab" * 32, adopted=True, blocks=3),
        "daemon_started",
        {"generation": 1, "policy_sha256": "ab" * 32, "adopted": True, "blocks": 3},
    ),
    (ar.DaemonStopped(generation=4), "daemon_stopped", {"generation": 4}),
    (ar.StoreRecovered(reason="malformed"), "store_recovered", {"reason": "malformed"}),
    (
        ar.ReloadApplied(
            trigger="api",
            generation=2,
            policy_sha256="p" * 64,
            ruleset_sha256="r" * 64,
            kernel_changed=False,
        ),
        "reload_applied",
        {
            "trigger": "api",
            "generation": 2,
            "policy_sha256": "p" * 64,
            "ruleset_sha256": "r" * 64,
            "kernel_changed": False,
        },
    ),
    (
        ar.ReloadRejected(trigger="sighup", errors=({"code": "E-APPLY", "message": "no"},)),
        "reload_rejected",
        {"trigger": "sighup", "errors": [{"code": "E-APPLY", "message": "no"}]},
    ),
    (
        ar.DriftRepaired(generation=3, table_existed=False),
        "drift_repaired",
        {"generation": 3, "table_existed": False},
    ),
    (
        ar.ElementsRepaired(generation=3, elements_restored=7),
        "drift_repaired",
        {"generation": 3, "elements_restored": 7},
    ),
    (
        ar.Blocked(
            source_ip="203.0.113.7",
            count=2,
            source="manual",
            addresses=("203.0.113.7", "2001:db8::/64"),
            ttl=600,
            reason="probe",
            actor=ACTOR,
        ),
        "blocked",
        {
            "source_ip": "203.0.113.7",
            "count": 2,
            "source": "manual",
            "addresses": ["203.0.113.7", "2001:db8::/64"],
            "ttl": 600,
            "reason": "probe",
            "actor": ACTOR,
        },
    ),
    (
        ar.Blocked(
            source_ip=None, count=0, source="api", addresses=(), ttl=None, reason=None, actor=None
        ),
        "blocked",
        {
            "source_ip": None,
            "count": 0,
            "source": "api",
            "addresses": [],
            "ttl": None,
            "reason": None,
            "actor": None,
        },
    ),
    (
        ar.Unblocked(source_ip="203.0.113.7", reason="probe", source="manual", actor=ACTOR),
        "unblocked",
        {"source_ip": "203.0.113.7", "reason": "probe", "source": "manual", "actor": ACTOR},
    ),
    (
        ar.BlockExpired(source_ip="203.0.113.7", reason="probe", source="detection"),
        "block_expired",
        {"source_ip": "203.0.113.7", "reason": "probe", "source": "detection"},
    ),
    *[
        (
            ar.escalation(kind)(
                source_ip="198.51.100.20",
                threat="BRUTE_FORCE",
                severity="high",
                block_number=n,
                ttl=ttl,
                reason="reputation: ...",
                actor=None,
            ),
            f"escalation_{kind}",
            {
                "source_ip": "198.51.100.20",
                "threat": "BRUTE_FORCE",
                "severity": "high",
                "block_number": n,
                "ttl": ttl,
                "reason": "reputation: ...",
                "actor": None,
            },
        )
        for kind, n, ttl in (("temporary", 1, 3600), ("permanent", 3, None))
    ],
    (
        ar.AuditSummary(
            summarized="escalation_temporary",
            source="uid 1001",
            count=480,
            addresses=("198.51.100.20", "198.51.100.21"),
            since="2026-03-10T14:00:00.731Z",
        ),
        "audit_summary",
        {
            "summarized": "escalation_temporary",
            "source": "uid 1001",
            "count": 480,
            "addresses": ["198.51.100.20", "198.51.100.21"],
            "since": "2026-03-10T14:00:00.731Z",
        },
    ),
    (
        ar.AccessDenied(
            verdict="deny", actor=ACTOR, method="POST", path="/v1/blocks", role="admin"
        ),
        "access_denied",
        {
            "verdict": "deny",
            "actor": ACTOR,
            "method": "POST",
            "path": "/v1/blocks",
            "role": "admin",
            "count": 1,
        },
    ),
    (
        ar.RequestRejected(
            method="POST", path="/v1/x", status=400, code="E-SCHEMA", reason="bad", actor=ACTOR
        ),
        "request_rejected",
        {
            "method": "POST",
            "path": "/v1/x",
            "status": 400,
            "code": "E-SCHEMA",
            "reason": "bad",
            "actor": ACTOR,
            "count": 1,
        },
    ),
    _sample(
        ar.DecisionDenied,
        "decision",
        {
            "verdict": "deny",
            "rule_name": "x",
            "zone": "external",
            "source_ip": "10.77.0.2",
            "dest_service": "Secrets",
            "reason": "r",
            "latency_us": None,
            "source_port": 40000,
            "dest_ip": "10.77.1.1",
            "dest_port": 8111,
            "protocol": "tcp",
            "direction": "inbound",
            "kind": "denied",
            "origin": "kernel",
        },
    ),
    _sample(
        ar.DecisionAllowed,
        "decision",
        {
            "verdict": "allow",
            "rule_name": None,
            "zone": None,
            "source_ip": "10.77.0.2",
            "dest_service": None,
            "reason": "r",
            "latency_us": 3.5,
            "source_port": None,
            "dest_ip": "10.77.1.1",
            "dest_port": 53,
            "protocol": "udp",
            "direction": "outbound",
            "kind": "evaluate",
            "origin": "evaluate",
        },
    ),
    (
        ar.EgressDnsChanged(host="example.org", added=("10.77.1.1",), removed=()),
        "egress_dns_changed",
        {"host": "example.org", "added": ["10.77.1.1"], "removed": []},
    ),
    (
        ar.EgressDnsFailed(host="example.org", reason="SERVFAIL"),
        "egress_dns_failed",
        {"host": "example.org", "reason": "SERVFAIL"},
    ),
    (
        ar.GeoRefreshed(source="list:drop", path="/l", elements=3, added=1, removed=0, bad_lines=2),
        "geo_refreshed",
        {
            "source": "list:drop",
            "path": "/l",
            "elements": 3,
            "added": 1,
            "removed": 0,
            "bad_lines": 2,
        },
    ),
    (
        ar.GeoRefreshFailed(source="geoip", path="/db", reason="corrupt"),
        "geo_refresh_failed",
        {"source": "geoip", "path": "/db", "reason": "corrupt"},
    ),
    (
        ar.SandboxGranted(
            destination="example.org",
            addresses=("10.77.1.1",),
            scope="tcp",
            ttl=300,
            ports=(443, 80),
            capped=True,
            actor=ACTOR,
        ),
        "sandbox_granted",
        {
            "destination": "example.org",
            "addresses": ["10.77.1.1"],
            "scope": "tcp",
            "ttl": 300,
            "ports": [443, 80],
            "capped": True,
            "actor": ACTOR,
        },
    ),
    (
        ar.SandboxRefused(destination="10.0.0.0/8", scope="any", reason="too wide", actor=ACTOR),
        "sandbox_refused",
        {"destination": "10.0.0.0/8", "scope": "any", "reason": "too wide", "actor": ACTOR},
    ),
    (
        ar.SandboxRevoked(destination="example.org", addresses=("10.77.1.1",), actor=ACTOR),
        "sandbox_revoked",
        {"destination": "example.org", "addresses": ["10.77.1.1"], "actor": ACTOR},
    ),
    (
        ar.SandboxFollowed(destination="10.77.1.2", host="example.org", scope="tcp"),
        "sandbox_followed",
        {"destination": "10.77.1.2", "host": "example.org", "scope": "tcp"},
    ),
    (
        ar.SandboxExpired(destination="10.77.1.2", scope="tcp"),
        "sandbox_expired",
        {"destination": "10.77.1.2", "scope": "tcp"},
    ),
    _sample(
        ar.ToolDecisionAllowed,
        "decision",
        {
            "verdict": "allow",
            "rule_name": "web.fetch",
            "source_ip": "127.0.0.1",
            "dest_service": "web.fetch",
            "reason": "tool allowed by allow entry 'web.fetch'",
            "latency_us": 41.5,
            "tool": "web.fetch",
            "params": {"url": "https://example.org/"},
            "allowed": True,
            "agent": "alice",
            "reason_class": "allowed",
            "destination": "example.org:443",
            "origin": "gateway",
        },
        count=1,
    ),
    _sample(
        ar.ToolDecisionDenied,
        "decision",
        {
            "verdict": "deny",
            "rule_name": "shell.exec",
            "source_ip": None,
            "dest_service": "shell.exec",
            "reason": "tool is explicitly denied",
            "latency_us": 41.5,
            "tool": "shell.exec",
            "params": {"cmd": "rm -rf /"},
            "allowed": False,
            "agent": "anonymous",
            "reason_class": "denied_tool",
            "destination": "",
            "origin": "gateway",
        },
        count=1,
    ),
    _sample(
        ar.HttpDecisionDenied,
        "decision",
        {
            "verdict": "deny",
            "rule_name": "no_private_outside",
            "zone": "external",
            "source_ip": "198.51.100.7",
            "dest_service": None,
            "reason": "rule 'no_private_outside' denies",
            "latency_us": 12.5,
            "dest_ip": "10.77.0.1",
            "dest_port": 8000,
            "method": "GET",
            "path": "/private",
            "status": 403,
            "request_id": "0123456789abcdef",
            "peer_ip": "10.77.0.2",
            "kind": "http",
            "origin": "middleware",
            "count": 1,
        },
    ),
    _sample(
        ar.HttpDecisionAllowed,
        "decision",
        {
            "verdict": "allow",
            "rule_name": "web",
            "zone": "internal",
            "source_ip": "10.1.2.3",
            "dest_service": None,
            "reason": "rule 'web' allows",
            "latency_us": 12.5,
            "dest_ip": "10.77.0.1",
            "dest_port": 8000,
            "method": "PATCH",
            "path": "/",
            "status": None,
            "request_id": None,
            "peer_ip": "10.1.2.3",
            "kind": "http",
            "origin": "middleware",
            "count": 3,
        },
    ),
    (
        ar.GatewayReloaded(trigger="api", accepted=True, policy_sha256="p" * 64, errors=()),
        "gateway_reload",
        {"trigger": "api", "accepted": True, "policy_sha256": "p" * 64, "errors": []},
    ),
    (
        ar.FleetBus(state="connected", server="nats://10.0.0.5:4222", fleet="prod"),
        "fleet_bus",
        {"state": "connected", "server": "nats://10.0.0.5:4222", "fleet": "prod"},
    ),
    (
        ar.FleetSkipped(
            source_ip="10.77.9.5", origin="web-1", op="block", why="protected", detail="mgmt"
        ),
        "fleet_skipped",
        {
            "source_ip": "10.77.9.5",
            "origin": "web-1",
            "op": "block",
            "why": "protected",
            "detail": "mgmt",
        },
    ),
]


def _old_line(now: float, event: str, fields: dict[str, object]) -> bytes:
    """What `AuditLog.write(now, event, **fields)` wrote before the schema existed."""
    record = {"timestamp": ar.rfc3339(now), "event": event, "action": OLD_ACTIONS.get(event, event)}
    record.update(fields)
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("ascii")


def test_every_record_type_has_a_sample() -> None:
    assert {type(r) for r, _, _ in SAMPLES} == set(ar.RECORDS)


@pytest.mark.parametrize(("record", "event", "fields"), SAMPLES, ids=lambda x: str(x)[:30])
def test_a_record_writes_the_same_line_as_before(
    record: ar.AuditRecord, event: str, fields: dict[str, object]
) -> None:
    """The same keys, order and values as before, then the OCSF attributes (appended)."""
    assert record.event == event
    obj = ar.as_json(record, NOW)
    tail = ar.ocsf_of(type(record), obj, 0)
    mine = {k: v for k, v in obj.items() if k not in ocsf.ALL_KEYS and k not in tail}
    if event != "decision":  # decisions are new: there is no line from before
        old = json.loads(_old_line(NOW, event, fields))
        assert list(mine) == list(old) and mine == old
    assert list(mine) == ["timestamp", "event", "action", *fields]
    assert list(obj)[len(mine) :] == list(ar.ocsf_of(type(record), obj, obj["time"]))  # type: ignore[arg-type]
    assert obj["timestamp"] == "2027-01-15T08:00:00.250Z" and obj["time"] == 1_800_000_000_250


@pytest.mark.parametrize(("record", "event", "fields"), SAMPLES, ids=lambda x: str(x)[:30])
def test_a_written_line_validates(record: ar.AuditRecord, event: str, fields: object) -> None:
    line = json.loads(encode(NOW, record))
    assert validate_line(line) == []


def test_records_are_frozen_and_slotted() -> None:
    for cls in ar.RECORDS:
        assert dataclasses.is_dataclass(cls) and hasattr(cls, "__slots__"), cls
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ar.DaemonStopped(generation=1).generation = 2  # type: ignore[misc]


def _line(record: ar.AuditRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(encode(NOW, record))
    return parsed


def test_validate_line_names_each_problem() -> None:
    good = _line(SAMPLES[7][0])  # a blocked line
    assert validate_line({**good, "event": "forged"}) == ["event: unknown 'forged'"]
    assert validate_line({**good, "action": "drop"}) == ["action: expected 'block', got 'drop'"]
    missing = {k: v for k, v in good.items() if k != "ttl"}
    assert validate_line(missing) == ["blocked: missing ttl"]
    assert validate_line({**good, "n": 1}) == ["blocked: unexpected n"]
    assert validate_line({**good, "count": True}) == ["count: expected int, got True"]
    assert validate_line({**good, "addresses": ["x", 1]}) == ["addresses[1]: expected str, got 1"]
    assert validate_line({**good, "actor": {"uid": "root"}}) != []
    assert validate_line({**good, "timestamp": "yesterday"}) != []
    reordered = {"count": good["count"], **good}
    assert validate_line(reordered) != []  # the order is part of the format


def test_validate_line_accepts_either_shape_of_a_shared_event() -> None:
    table = _line(ar.DriftRepaired(generation=2, table_existed=True))
    elements = _line(ar.ElementsRepaired(generation=2, elements_restored=4))
    assert validate_line(table) == validate_line(elements) == []
    assert validate_line({**table, "elements_restored": 1}) != []


def test_every_line_the_services_write_validates(tmp_path: Path) -> None:
    """A cold start, blocks, an unblock, escalations, refused and applied reloads on the
    fakes: each line of the JSONL file they produce fits the schema."""
    policy = (
        "version: 1\nsettings: {default_policy: deny, admin_ports: [22]}\n"
        "zones:\n  - {name: external, cidrs: [0.0.0.0/0, '::/0']}\n"
        "reputation: {threshold: 5}\n"
        "rules:\n  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}\n"
    )
    fake = fake_daemon(tmp_path, policy)
    s = fake.services

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            await s.blocks.block([BlockSpec("203.0.113.7", 600, "probe")], actor=ACTOR)
            await s.blocks.unblock(ipaddress.ip_network("203.0.113.7/32"), actor=ACTOR)
            source = ipaddress.ip_address("198.51.100.20")
            await s.reputation.threats([ThreatSpec("BRUTE_FORCE", source, Severity.HIGH, "x")] * 3)
            fake.policy_path.write_text("version: [")
            assert (await s.generations.reload()).result == "rejected"
            fake.policy_path.write_text(policy.replace("threshold: 5", "threshold: 9"))
            assert (await s.generations.reload()).result == "applied"
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        s.ports.store.close()
    lines = fake.audit_path.read_text().splitlines()
    events = [json.loads(x)["event"] for x in lines]
    for wanted in ("daemon_started", "blocked", "unblocked", "reload_rejected", "reload_applied"):
        assert wanted in events
    assert any(e.startswith("escalation_") for e in events)
    assert [p for x in lines for p in validate_line(json.loads(x))] == []


def _audit_writes(tree: ast.AST) -> list[ast.Call]:
    """Calls of `<...>.audit.write(...)` or `audit.write(...)`."""
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "write":
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if name == "audit":
            calls.append(node)
    return calls


def test_the_package_audits_only_with_records() -> None:
    bad, seen = [], 0
    for path in sorted(PKG.rglob("*.py")):
        for call in _audit_writes(ast.parse(path.read_text())):
            seen += 1
            where = f"{path.relative_to(PKG)}:{call.lineno}"
            if call.keywords:
                bad.append(f"{where}: keyword arguments")
            if len(call.args) != 2:
                bad.append(f"{where}: expected (now, record)")
            elif isinstance(call.args[1], ast.JoinedStr) or (
                isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)
            ):
                bad.append(f"{where}: an event string instead of a record")
    assert seen >= 20  # the scan finds the daemon's audit calls at all
    assert bad == []


def test_the_scan_catches_a_free_form_write() -> None:
    tree = ast.parse('self.audit.write(now, "blocked", source_ip="x")\naudit.write(now, f"e_{k}")')
    calls = _audit_writes(tree)
    assert len(calls) == 2
    assert calls[0].keywords and isinstance(calls[1].args[1], ast.JoinedStr)


def test_a_closed_log_writes_records_to_nothing() -> None:
    AuditLog(None).write(NOW, ar.DaemonStopped(generation=1))  # no path: a no-op
