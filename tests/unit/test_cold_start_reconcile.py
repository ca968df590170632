"""A cold start reconciles every dynamic set with the kernel (issue 14, items 6 and 7): what
the kernel enforces and the store never recorded — a write lost to a full disk, a database
moved aside — is adopted, visible and revocable; a complete store is not listed at all."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aitherfwd.control.sandbox import GrantSpec
from aitherfwd.control.schema import BlockSpec, EvaluateSpec
from aitherfwd.daemon.egress import Caller
from aitherfwd.policy.model import Protocol
from aitherfwd.testing import FakeDaemon, FakeKernel, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: allow, admin_ports: [22]}
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
egress:
  default_action: reject
  resolvers: [10.77.0.53]
sandbox: {max_ttl: 1h, default_ttl: 10m}
"""
ROOT = Caller(0, 0)
ACTOR = {"uid": 0, "gid": 0, "pid": 1}


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            return await body()
        finally:
            task.cancel()

    return asyncio.run(main())


async def nothing() -> None:
    return None


def restart(old: FakeDaemon) -> FakeDaemon:
    """A new daemon on the same state directory and the same kernel table."""
    old.services.ports.store.close()
    new = fake_daemon(old.policy_path.parent, old.policy_path.read_text())
    new.clock.wall, new.clock.mono = old.clock.wall, old.clock.mono
    new.kernel.table = old.kernel.table
    new.kernel.clock = new.clock
    return new


class FullDisk:
    """A SQLite connection whose writes fail as on a full disk (reads pass)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def executemany(self, sql: str, rows: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_ban_the_store_missed_on_a_full_disk_is_adopted_at_the_next_start(
    tmp_path: Path,
) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    s = fake.services
    store = s.ports.store

    async def block_while_full() -> None:
        await s.blocks.block([BlockSpec("198.51.100.1", None, "stored")])
        real = store._db
        store._db = FullDisk(real)  # type: ignore[assignment]
        await s.blocks.block([BlockSpec("203.0.113.7", None, "lost to the full disk")])
        # killed before the disk had room again: the write kept to retry is lost with the
        # process (with room, flush_pending would have written it: tests/unit/test_store_open)
        store.pending.clear()
        store.pending_rows = 0
        store._db = real  # the disk has room again: the store looks healthy

    run(fake, block_while_full)
    assert store.write_errors == 1
    assert fake.kernel.values("block_v4") == {"198.51.100.1", "203.0.113.7"}
    again = restart(fake)
    a = again.services

    async def after() -> None:
        now = again.clock.now()
        blk = a.blocks.table.get("203.0.113.7", now)
        assert blk is not None and blk.source == "kernel"
        judged = a.queries.evaluate(
            EvaluateSpec(
                ipaddress.ip_address("203.0.113.7"), Protocol.TCP, 22, "inbound", None, None, None
            )
        )
        assert judged.verdict.verdict == "deny", judged.verdict
        assert "found in the kernel" in judged.verdict.reason
        await a.blocks.unblock(ipaddress.ip_network("203.0.113.7"))  # not a 404

    run(again, after)
    assert again.kernel.values("block_v4") == {"198.51.100.1"}
    assert not again.services.ports.store.incomplete.is_set  # reconciled: cleared
    again.services.ports.store.close()


def test_a_complete_store_is_not_listed_at_start(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)

    async def block() -> None:
        await fake.services.blocks.block([BlockSpec("198.51.100.1", None, "stored")])

    run(fake, block)
    again = restart(fake)
    listed: list[str] = []
    original = FakeKernel.set_elements

    def spy(self: FakeKernel, name: str) -> list[Any]:
        listed.append(name)
        return original(self, name)

    again.kernel.set_elements = spy.__get__(again.kernel)  # type: ignore[method-assign]
    run(again, nothing)
    assert listed == []
    again.services.ports.store.close()


def test_grants_in_the_kernel_after_a_store_recovery_are_adopted_and_revocable(
    tmp_path: Path,
) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    e = fake.services.egress

    async def grant() -> None:
        for dest, ports in (("198.18.0.1", ()), ("198.18.4.0/24", (443, 8443))):
            spec = GrantSpec(ipaddress.ip_network(dest), None, 600, "sandbox-alice", ports)
            await e.grant(spec, ROOT, ACTOR)

    run(fake, grant)
    fake.services.ports.store.close()
    db = tmp_path / "state" / "state.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"garbage, not a database" * 100)
    again = restart(fake)
    a = again.services
    assert a.ports.store.recovered is not None

    async def after() -> None:
        now = again.clock.now()
        host = a.egress.grants.get("198.18.0.1", now)
        net = a.egress.grants.get("198.18.4.0/24", now)
        assert host is not None and host.scope == "sandbox-alice"
        assert net is not None and net.ports == (443, 8443)
        assert 590 <= net.remaining(now) <= 600
        await a.egress.revoke("198.18.4.0/24", ACTOR)  # not a 404

    run(again, after)
    assert again.kernel.values("sandbox_port_v4") == set()
    assert again.kernel.values("sandbox_v4") == {"198.18.0.1"}
    store = again.services.ports.store
    assert [g.key for g in store.load_grants(again.clock.now())] == ["198.18.0.1"]
    store.close()
