"""The decision records of the layer-7 enforcement points, without a server: the
middleware's sampler (bounded lines, counts that add up, other clients never hidden), the
queued writer that keeps the disk off the event loop (a full queue drops and counts, close
writes the rest), the OCSF classes (HTTP Activity, API Activity) and the gateway's rule
names."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from pathlib import Path

from aitherfwd import audit_records as ar
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.audit_queue import QueuedAudit
from aitherfwd.audit_check import validate_line
from aitherfwd.audit_sample import DecisionSampler
from aitherfwd.audit_view import render
from aitherfwd.gateway.evaluate import Call
from tests.unit.gateway_helpers import SEED_POLICY, gateway

DENIED = ar.HttpDecisionDenied(
    verdict="deny",
    rule_name="no_private_outside",
    zone="external",
    source_ip="198.51.100.9",
    dest_service=None,
    reason="r",
    latency_us=9.0,
    dest_ip="10.77.0.1",
    dest_port=8000,
    method="GET",
    path="/private",
    status=403,
    request_id="00",
    peer_ip="10.77.0.2",
    kind="http",
    origin="middleware",
)


def test_a_flood_from_one_client_is_a_few_lines_whose_counts_add_up() -> None:
    sampler = DecisionSampler[ar.HttpDecision](per_source=1, interval=10.0)
    written: list[ar.HttpDecision] = []
    now = 1000.0
    for i in range(10_000):  # 10,000 denials over 20 seconds
        now = 1000.0 + i * 0.002
        out = sampler.offer(DENIED, 10, now)
        written += [out] if out is not None else []
        written += sampler.flush(now)
    written += sampler.flush(now, final=True)
    assert sum(r.count for r in written) == 10_000
    assert len(written) <= 20 + 2 + 3  # 1 a second, an aggregate each 10 s, the last
    assert sampler.lines == len(written)


def test_the_policys_audit_decisions_bounds_each_rule_across_clients() -> None:
    sampler = DecisionSampler[ar.HttpDecision](per_source=1, interval=10.0)
    taken = [
        sampler.offer(replace(DENIED, source_ip=f"198.51.100.{i}"), 10, 1000.0)
        for i in range(1, 101)
    ]
    assert sum(1 for r in taken if r is not None) == 10  # settings.audit_decisions: 10/s
    assert sampler.offer(replace(DENIED, rule_name="other"), 10, 1000.0) is not None
    assert sampler.offer(replace(DENIED, source_ip="203.0.113.1"), 0, 1000.0) is None  # 0: none


def test_a_line_after_left_out_decisions_counts_them() -> None:
    sampler = DecisionSampler[ar.HttpDecision](per_source=1, interval=60.0)
    assert sampler.offer(DENIED, 10, 0.0) is not None
    assert sampler.offer(DENIED, 10, 0.1) is None
    assert sampler.offer(DENIED, 10, 0.2) is None
    line = sampler.offer(DENIED, 10, 1.5)
    assert line is not None and line.count == 3
    assert sampler.flush(100.0) == []  # nothing left out since


def test_beyond_the_pending_keys_clients_are_counted_together_never_lost() -> None:
    sampler = DecisionSampler[ar.HttpDecision](per_source=1, interval=10.0, pending_keys=4)
    for i in range(50):
        for _ in range(3):
            sampler.offer(replace(DENIED, source_ip=f"198.51.100.{i}"), 1000, 5.0)
    lines = sampler.flush(5.0, final=True)
    assert len(lines) == 5 and sum(r.count for r in lines) == 50 * 3 - 50


def test_the_queued_writer_never_waits_and_counts_what_it_drops(tmp_path: Path) -> None:
    class Stuck(AuditLog):
        gate = threading.Event()

        def write(self, now: float, record: ar.AuditRecord) -> None:
            self.gate.wait(10)
            super().write(now, record)

    sink = QueuedAudit(Stuck(tmp_path / "a.jsonl"), capacity=5)
    for _ in range(20):
        sink.write(1.0, DENIED)  # returns at once although the disk is stuck
    assert sink.dropped >= 14
    Stuck.gate.set()
    sink.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 20 - sink.dropped
    assert all(validate_line(json.loads(x)) == [] for x in lines)


def test_the_queued_writer_writes_its_ticks_and_the_final_one_at_close(tmp_path: Path) -> None:
    finals: list[bool] = []

    def tick(now: float, final: bool) -> list[ar.AuditRecord]:
        finals.append(final)
        return [replace(DENIED, count=7)] if final else []

    sink = QueuedAudit(AuditLog(tmp_path / "a.jsonl"), on_tick=tick, tick=0.01)
    sink.write(1.0, DENIED)
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["count"] for x in lines] == [1, 7] and finals[-1] is True
    sink.write(2.0, DENIED)  # after close: dropped, counted
    assert sink.dropped == 1


def test_the_queued_writer_rotates_like_the_daemons(tmp_path: Path) -> None:
    sink = QueuedAudit(AuditLog(tmp_path / "a.jsonl", max_bytes=4000, keep=2))
    for _ in range(20):
        sink.write(1.0, DENIED)
    sink.close()
    assert (tmp_path / "a.jsonl.1").exists() and (tmp_path / "a.jsonl").stat().st_size <= 4000


def test_an_http_method_ocsf_1_1_does_not_name_is_activity_other_with_its_name() -> None:
    line = ar.as_json(replace(DENIED, method="PATCH"), 0)
    assert (line["activity_id"], line["activity_name"], line["type_uid"]) == (99, "Patch", 400299)
    assert validate_line(line) == []
    line = ar.as_json(replace(DENIED, method="DELETE"), 0)
    assert (line["activity_id"], line["activity_name"]) == (2, "Delete")


def test_a_tool_call_line_is_api_activity_with_the_agent_as_actor() -> None:
    gw, audit, _ = gateway(SEED_POLICY.read_text())
    asyncio.run(gw.decide(Call("Shell.Exec", {"cmd": "x"}, "bob", "127.0.0.1")))
    line = ar.as_json(audit.records[0], 0)
    assert validate_line(line) == []
    assert (line["class_uid"], line["category_uid"], line["activity_name"]) == (
        6003,
        6,
        "Tool Call",
    )
    assert line["actor"] == {"user": {"name": "bob"}} and line["src_endpoint"] == {
        "ip": "127.0.0.1"
    }
    assert line["api"] == {"operation": "Shell.Exec", "service": {"name": "aitherfwd-gateway"}}
    assert (line["verdict"], line["rule_name"], line["dest_service"]) == (
        "deny",
        "shell.exec",  # the deny entry as the policy writes it
        "Shell.Exec",
    )
    assert line["disposition"] == "Blocked" and line["latency_us"] >= 0


def test_the_gateways_rule_name_is_the_entry_that_decided_or_default() -> None:
    gw, audit, _ = gateway(SEED_POLICY.read_text())
    asyncio.run(gw.decide(Call("web.search", {"q": "weather"})))
    asyncio.run(gw.decide(Call("web.search", {"q": "my password"})))
    asyncio.run(gw.decide(Call("unknown.tool")))
    got = [(r.verdict, r.rule_name, r.reason) for r in audit.records]  # type: ignore[attr-defined]
    assert got[0] == ("allow", "web.search", "tool allowed by allow entry 'web.search'")
    assert got[1][:2] == ("deny", "web.search") and "blocked pattern" in got[1][2]
    assert got[2] == ("deny", "default", "tool not in allowlist")


def test_audit_tail_shows_the_request_and_the_tool() -> None:
    http = render(ar.as_json(replace(DENIED, count=40), 0))
    assert "deny 198.51.100.9 → GET /private (port 8000, status 403, count 40)" in http
    assert "rule_name=no_private_outside" in http and "origin=middleware" in http
    gw, audit, _ = gateway(SEED_POLICY.read_text())
    asyncio.run(gw.decide(Call("shell.exec", {}, "bob", "127.0.0.1")))
    tool = render(ar.as_json(audit.records[0], 0))
    assert "deny 127.0.0.1 → tool shell.exec" in tool and "agent=bob" in tool
    assert tool.endswith("tool is explicitly denied")


def test_a_flood_of_rate_limited_tool_calls_is_a_few_lines_whose_counts_add_up() -> None:
    gw, audit, clock = gateway("tools: {default: allow, rate_limit: {requests_per_minute: 5}}\n")

    async def flood() -> None:
        for _ in range(2000):  # 2,000 calls in 20 s from one agent
            await gw.decide(Call("t", {}, "bob", "127.0.0.1"))
            clock.advance(0.01)
            audit.records.extend(gw.audit_tick(clock.now(), False))

    asyncio.run(flood())
    audit.records.extend(gw.audit_tick(clock.now(), True))
    lines = [ar.as_json(r, 0) for r in audit.records]
    assert all(validate_line(x) == [] for x in lines)
    limited = [x for x in lines if x["verdict"] == "rate_limited"]
    assert len([x for x in lines if x["verdict"] == "allow"]) == 5  # every admitted call
    assert sum(int(x["count"]) for x in limited) == 2000 - 5  # type: ignore[call-overload]
    assert len(limited) <= 20 + 2 + 2
    assert {x["rule_name"] for x in limited} == {"default"}


def test_audit_tail_escapes_control_characters_of_a_hostile_path_or_tool() -> None:
    shown = render(ar.as_json(replace(DENIED, path="/a\n\x1b[2J\u2028b"), 0))
    assert "\n" not in shown and "\x1b" not in shown and "\u2028" not in shown
    assert "/a\\u000a\\u001b[2J\\u2028b" in shown
