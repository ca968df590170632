"""Drift repair reads the kernel in the writer thread and the tables only on the event loop.

A 600 s soak once killed the daemon: the element repair iterated the block table in the
writer thread while the loop added blocks ("dictionary changed size during iteration"),
the writer died and the process exited. These tests pin the fix: every method of the
block and grant tables is called from the loop's thread only, whatever the repair does
(a flushed set, a deleted table, elements added by someone else), and a block lifted while
the kernel is being listed is not put back.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.control.schema import BlockSpec
from aitherfwd.dynamic.blocks import BlockTable
from aitherfwd.egress.grants import GrantTable
from aitherfwd.testing import FakeDaemon, fake_daemon
from tests.unit.test_services import POLICY, run

FLUSH = {"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "block_v4"}}}


@pytest.fixture
def fake(tmp_path: Path) -> FakeDaemon:
    return fake_daemon(tmp_path, POLICY)


def _guard(obj: Any, cls: type, seen: list[str]) -> None:
    """Wrap every public method and the private helpers of `obj` to record a call made
    off the thread that created the guard."""
    home = threading.current_thread()
    for name, member in vars(cls).items():
        if not callable(member) or name.startswith("__"):
            continue
        bound = getattr(obj, name)

        def wrapper(*args: Any, _f: Callable[..., Any] = bound, _n: str = name, **kw: Any) -> Any:
            if threading.current_thread() is not home:
                seen.append(f"{cls.__name__}.{_n} in {threading.current_thread().name}")
            return _f(*args, **kw)

        setattr(obj, name, functools.wraps(bound)(wrapper))


def test_the_writer_thread_never_touches_the_block_or_grant_tables(fake: FakeDaemon) -> None:
    s = fake.services
    off_loop: list[str] = []

    async def drift() -> None:
        _guard(s.blocks.table, BlockTable, off_loop)
        _guard(s.egress.grants, GrantTable, off_loop)
        await s.blocks.block([BlockSpec(f"203.0.113.{i}", 600, "x") for i in range(1, 50)])
        fake.kernel.run([FLUSH])  # someone flushed a block set: the element repair
        assert await s.generations.check_drift()
        fake.kernel.table = None  # someone deleted the table: the full repair
        fake.kernel.touch()
        assert await s.generations.check_drift()

    run(fake, drift)
    assert off_loop == []
    assert len(fake.kernel.values("block_v4")) == 49


def test_a_block_lifted_while_the_kernel_is_listed_is_not_put_back(fake: FakeDaemon) -> None:
    s = fake.services
    listing = threading.Event()
    lifted = threading.Event()
    original = fake.kernel.set_elements

    def slow_listing(name: str) -> list[Any]:
        listing.set()
        lifted.wait(5)  # the loop unblocks while the writer thread lists
        return original(name)

    async def drift() -> None:
        await s.blocks.block(
            [BlockSpec("203.0.113.7", 600, "x"), BlockSpec("203.0.113.8", 600, "y")]
        )
        fake.kernel.run([FLUSH])
        fake.kernel.set_elements = slow_listing  # type: ignore[method-assign]
        repair = asyncio.ensure_future(s.generations.check_drift())
        while not listing.is_set():
            await asyncio.sleep(0.001)
        unblock = asyncio.ensure_future(s.blocks.unblock(_net("203.0.113.7")))
        await asyncio.sleep(0)  # the unblock's delete is queued behind the listing
        lifted.set()
        assert await repair
        await unblock

    run(fake, drift)
    assert fake.kernel.values("block_v4") == {"203.0.113.8"}
    assert s.blocks.table.get("203.0.113.7", fake.clock.now()) is None


def _net(text: str) -> Any:
    import ipaddress  # noqa: PLC0415

    return ipaddress.ip_network(text)
