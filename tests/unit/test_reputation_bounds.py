"""Reputation state is bounded (issue 14, item 8): offenders whose score decayed to nothing
are forgotten in memory and on disk, the table is capped, threat types beyond a few are
counted as "other", and /v1/status stays small whatever report-role clients send. And
what report-role clients may get blocked (item 13): never a live admin session nor a
resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from aitherfwd.control.schema import ThreatSpec
from aitherfwd.daemon import reputation as rep
from aitherfwd.daemon import views
from aitherfwd.policy.model import Severity
from aitherfwd.testing import FakeDaemon, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: allow}
reputation: {threshold: 5, decay_half_life: 10m}
"""


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = fake_daemon(tmp_path, POLICY)
    yield d
    d.services.ports.store.close()


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            return await body()
        finally:
            task.cancel()

    return asyncio.run(main())


def events(start: int, count: int) -> list[ThreatSpec]:
    """One event each from distinct IPv4 sources, each of a distinct type."""
    base = int(ipaddress.IPv4Address("11.0.0.0"))
    return [
        ThreatSpec(f"PROBE_{i}", ipaddress.IPv4Address(base + i), Severity.LOW, "x" * 400)
        for i in range(start, start + count)
    ]


def stored_offenders(fake: FakeDaemon) -> int:
    db = fake.services.ports.store._db
    return int(db.execute("SELECT count(*) FROM offenders").fetchone()[0])


def test_400000_events_from_distinct_sources_and_types_keep_memory_and_status_bounded(
    fake: FakeDaemon,
) -> None:
    r = fake.services.reputation
    r.max_offenders = 20_000  # the cap is the property under test; default 100,000

    async def flood() -> None:
        for start in range(0, 400_000, 50_000):
            await r.threats(events(start, 50_000))
            fake.clock.advance(30)

    run(fake, flood)
    assert len(r.offenders) <= r.max_offenders
    assert stored_offenders(fake) <= r.max_offenders
    assert len(r.recent) <= rep.RECENT_ADDRESSES
    assert len(r.threat_counts) <= rep.MAX_THREAT_TYPES + 1
    assert r.threat_counts[rep.OTHER_TYPE] == 400_000 - rep.MAX_THREAT_TYPES
    started = time.perf_counter()
    body = json.dumps(views.status(fake.services))
    assert time.perf_counter() - started < 0.05
    assert len(body) < 20_000  # counts only: no offender is listed


def test_offenders_whose_score_decayed_are_forgotten_in_memory_and_on_disk(
    fake: FakeDaemon,
) -> None:
    r = fake.services.reputation

    async def flood() -> None:
        await r.threats(events(0, 5_000))
        fake.clock.advance(24 * 3600)  # a day: 144 half-lives
        for start in range(10_000, 20_000, 1_000):  # the sweep is amortised over new events
            await r.threats(events(start, 1_000))

    run(fake, flood)
    first = {
        str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("11.0.0.0")) + i)) for i in range(5_000)
    }
    assert not first & set(r.offenders)
    assert stored_offenders(fake) == len(r.offenders) == 10_000
    assert r.pruned == 5_000


def test_an_offender_with_a_block_to_remember_is_not_forgotten(fake: FakeDaemon) -> None:
    r = fake.services.reputation
    source = ipaddress.IPv4Address("203.0.113.9")

    async def escalate() -> None:
        burst = [ThreatSpec("SCAN", source, Severity.HIGH, "")] * 5
        out = await r.threats(burst)
        assert out.blocked
        fake.clock.advance(24 * 3600)
        await r.threats(events(0, 20_000))

    run(fake, escalate)
    assert "203.0.113.9" in r.offenders  # the ladder remembers its block within `memory`


# --- anti-lockout on the block path (issue 14, item 13) ------------------------------------

LOCKOUT_POLICY = """\
version: 1
settings: {default_policy: allow, admin_ports: [22]}
reputation: {threshold: 5}
egress: {default_action: reject, resolvers: [10.77.0.53]}
"""


def burst(source: str) -> list[ThreatSpec]:
    return [ThreatSpec("SCAN", ipaddress.ip_address(source), Severity.HIGH, "")] * 5


def test_reported_threats_never_block_a_live_admin_session_or_a_resolver(
    tmp_path: Path,
) -> None:
    fake = fake_daemon(tmp_path, LOCKOUT_POLICY)
    r = fake.services.reputation
    fake.conntrack.peers = {(ipaddress.ip_address("198.51.100.4"), 22)}

    async def report() -> None:
        out = await r.threats(burst("198.51.100.4") + burst("10.77.0.53") + burst("192.0.2.1"))
        assert [b.key for b in out.blocked] == ["192.0.2.1"]
        assert sorted(out.protected) == ["10.77.0.53", "198.51.100.4"]
        fake.conntrack.peers = set()  # the session ended: after the cache, blockable
        fake.clock.advance(3)
        out = await r.threats(burst("198.51.100.4"))
        assert [b.key for b in out.blocked] == ["198.51.100.4"]

    try:
        run(fake, report)
    finally:
        fake.services.ports.store.close()
    assert fake.kernel.values("block_v4") == {"192.0.2.1", "198.51.100.4"}


def test_an_admin_may_still_block_a_live_admin_session_by_hand(tmp_path: Path) -> None:
    from aitherfwd.control.schema import BlockSpec  # noqa: PLC0415

    fake = fake_daemon(tmp_path, LOCKOUT_POLICY)
    fake.conntrack.peers = {(ipaddress.ip_address("198.51.100.4"), 22)}

    async def block() -> None:
        await fake.services.blocks.block([BlockSpec("198.51.100.4", 60, "intruder")])

    try:
        run(fake, block)
    finally:
        fake.services.ports.store.close()
    assert fake.kernel.values("block_v4") == {"198.51.100.4"}
