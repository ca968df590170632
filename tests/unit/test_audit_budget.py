"""A flood of automated records cannot rotate the security events away (issue 14): the
audit budget writes the first records of a key as they are and folds the rest into one
`audit_summary` line per key and minute, while an administrator's records pass through.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.audit_check import validate_line
from aitherfwd.audit_records import (
    AuditRecord,
    AuditSummary,
    Blocked,
    BlockExpired,
    EscalationTemporary,
    SandboxGranted,
    Unblocked,
    as_json,
)
from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.daemon.audit_budget import LINES, AuditBudget
from aitherfwd.policy.model import Severity
from aitherfwd.testing import FakeDaemon, fake_daemon

REPORTER = {"uid": 1001, "gid": 1001, "pid": 7}
ADMIN = {"uid": 0, "gid": 0, "pid": 8}


class Sink:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, now: float, record: AuditRecord) -> None:
        self.records.append(record)


def escalation(i: int, uid: int = 1001) -> EscalationTemporary:
    return EscalationTemporary(
        source_ip=f"198.51.100.{i % 250}",
        threat="PORT_SCAN",
        severity="high",
        block_number=1,
        ttl=900,
        reason="reputation: temporary block #1 after PORT_SCAN",
        actor={**REPORTER, "uid": uid},
    )


def test_the_first_records_of_a_key_are_written_and_the_rest_become_one_summary() -> None:
    sink = Sink()
    budget = AuditBudget(sink, interval=60.0)
    for i in range(5_000):
        budget.write(1000.0 + i / 100, escalation(i))
    assert len(sink.records) == LINES  # nothing more until the window is over
    budget.flush(1059.0)
    assert len(sink.records) == LINES
    budget.flush(1060.0)
    (summary,) = sink.records[LINES:]
    assert isinstance(summary, AuditSummary)
    assert summary.count == 5_000 - LINES
    assert summary.summarized == "escalation_temporary"
    assert summary.source == "uid 1001"
    assert len(summary.addresses) == 100
    assert validate_line(as_json(summary, 1060.0)) == []


def test_a_sustained_flood_writes_one_summary_a_minute_and_a_quiet_key_starts_over() -> None:
    sink = Sink()
    budget = AuditBudget(sink, interval=60.0)
    now = 0.0
    for _minute in range(10):
        for i in range(1_000):
            budget.write(now + i * 0.05, escalation(i))
        now += 60.0
        budget.flush(now)
    summaries = [r for r in sink.records if isinstance(r, AuditSummary)]
    assert len(sink.records) - len(summaries) == LINES  # full lines only in the first window
    assert len(summaries) == 10
    assert sum(s.count for s in summaries) == 10_000 - LINES
    budget.flush(now + 60.0)  # a window with nothing folded: the key is forgotten
    assert not budget.windows
    budget.write(now + 61.0, escalation(1))
    assert isinstance(sink.records[-1], EscalationTemporary)  # written at once again


def test_keys_are_per_reporter_and_per_block_source_and_capped() -> None:
    sink = Sink()
    budget = AuditBudget(sink, max_keys=3)
    for uid in range(1001, 1011):
        for i in range(LINES + 5):
            budget.write(1.0, escalation(i, uid))
    # three reporters got their own lines; the others share the overflow key
    assert len(budget.windows) == 4
    budget.flush(100.0, final=True)
    summaries = [r for r in sink.records if isinstance(r, AuditSummary)]
    assert sum(s.count for s in summaries) + len(sink.records) - len(summaries) == 10 * (LINES + 5)
    assert {s.source for s in summaries} == {"uid 1001", "uid 1002", "uid 1003", "overflow"}


def test_an_administrators_records_and_manual_blocks_are_never_folded() -> None:
    sink = Sink()
    budget = AuditBudget(sink)
    for i in range(500):
        budget.write(
            1.0,
            Blocked(
                source_ip=f"203.0.113.{i % 250}",
                count=1,
                source="manual",
                addresses=(f"203.0.113.{i % 250}",),
                ttl=60,
                reason="x",
                actor=ADMIN,
            ),
        )
        budget.write(
            1.0, Unblocked(source_ip="203.0.113.1", reason="x", source="manual", actor=ADMIN)
        )
    assert len(sink.records) == 1_000


def test_blocked_lines_count_their_blocks_and_expiries_fold_per_source() -> None:
    sink = Sink()
    budget = AuditBudget(sink)
    addrs = tuple(f"10.0.{i // 250}.{i % 250}" for i in range(1_000))
    for _ in range(LINES + 2):
        budget.write(
            1.0,
            Blocked(
                source_ip=addrs[0],
                count=1_000,
                source="reputation",
                addresses=addrs[:100],
                ttl=60,
                reason="r",
                actor=None,
            ),
        )
    for a in addrs:
        budget.write(2.0, BlockExpired(source_ip=a, reason="r", source="manual"))
    budget.flush(100.0)
    summaries = {s.summarized: s for s in sink.records if isinstance(s, AuditSummary)}
    assert summaries["blocked"].count == 2_000  # two folded lines of 1,000 blocks each
    assert summaries["block_expired"].count == 1_000 - LINES
    assert summaries["block_expired"].source == "manual"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = fake_daemon(tmp_path, "version: 1\nsettings: {default_policy: allow}\n")
    yield d
    d.services.ports.store.close()


def test_a_report_role_flood_from_random_sources_costs_kilobytes_not_megabytes(
    fake: FakeDaemon,
) -> None:
    """10,000 high-severity events from distinct sources block each one; the trail gets a
    few lines, and the administrator's blocks during the flood are each on record."""
    s = fake.services
    base = int(ipaddress.IPv4Address("11.0.0.0"))

    async def body() -> None:
        for start in range(0, 10_000, 1_000):
            evs = [
                ThreatSpec("PORT_SCAN", ipaddress.IPv4Address(base + i), Severity.CRITICAL, "x")
                for i in range(start, start + 1_000)
            ]
            out = await s.reputation.threats(evs, REPORTER)
            assert len(out.blocked) == 1_000
            await s.blocks.block(
                [BlockSpec(f"203.0.113.{start // 1_000}", 60, "admin")], actor=ADMIN
            )

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            await body()
        finally:
            task.cancel()

    asyncio.run(main())
    assert s.audit_budget is not None
    s.audit_budget.flush(fake.clock.now(), final=True)
    events = fake.audit_events()
    assert fake.audit_path.stat().st_size < 200_000  # one line per offender: ≈ 7 MB
    admin = {
        a
        for e in events
        if e["event"] == "blocked" and e["source"] == "manual"
        for a in e["addresses"]
    }
    assert admin == {f"203.0.113.{i}" for i in range(10)}
    folded = sum(
        e["count"]
        for e in events
        if e["event"] == "audit_summary" and e["summarized"] == "escalation_temporary"
    )
    written = sum(1 for e in events if e["event"] == "escalation_temporary")
    assert written == LINES and written + folded == 10_000
    assert all(validate_line(e) == [] for e in events)


def grant(uid: int, i: int) -> SandboxGranted:
    return SandboxGranted(
        destination=f"192.0.2.{i % 250}",
        addresses=(f"192.0.2.{i % 250}",),
        scope="agent-1",
        ttl=60,
        ports=(443,),
        capped=False,
        actor={"uid": uid, "gid": uid, "pid": 9},
    )


def test_sandbox_grants_of_a_proxy_are_folded_and_an_administrators_are_not() -> None:
    sink = Sink()
    budget = AuditBudget(sink, exempt=lambda actor: actor.get("uid") == 0)
    for i in range(300):
        budget.write(1.0, grant(41002, i))
        budget.write(1.0, grant(0, i))
    budget.flush(61.0)
    granted = [r for r in sink.records if isinstance(r, SandboxGranted)]
    assert sum(1 for r in granted if r.actor["uid"] == 0) == 300
    assert sum(1 for r in granted if r.actor["uid"] == 41002) == LINES
    (summary,) = [r for r in sink.records if isinstance(r, AuditSummary)]
    assert (summary.summarized, summary.source, summary.count) == (
        "sandbox_granted",
        "uid 41002",
        300 - LINES,
    )
