"""Re-blocking and re-granting on a kernel that updates an element's timeout on `add`
(probed at the cold start): one add, no delete; on one that does not, add-delete-add.
Either way the kernel ends up with the new timeout. Through the fakes, no root."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aitherfwd.control.schema import BlockSpec
from aitherfwd.testing import FakeDaemon, fake_daemon

POLICY = "version: 1\nrules: [{name: web, dest_ports: [443], protocol: tcp, action: allow}]\n"


def run(fake: FakeDaemon, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            await body()
        finally:
            task.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("updates", [True, False])
def test_a_reblock_sets_the_new_timeout_with_the_fewest_commands(
    tmp_path: Path, updates: bool
) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    fake.kernel.timeout_updates = updates
    s = fake.services

    async def reblock() -> None:
        await s.blocks.block([BlockSpec("203.0.113.5", 60, "first")])
        before = len(fake.kernel.batches)
        await s.blocks.block([BlockSpec("203.0.113.5", 3600, "again")])
        (batch,) = fake.kernel.batches[before:]
        verbs = [next(iter(c)) for c in batch]
        assert verbs == (["add"] if updates else ["add", "delete", "add"])

    run(fake, reblock)
    assert s.blocks.table.update_in_place is updates
    expiry = fake.kernel.elements("block_v4")['"203.0.113.5"']
    assert expiry == pytest.approx(fake.clock.now() + 3600)


def test_a_temporary_block_made_permanent_still_deletes_first(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    s = fake.services

    async def permanent() -> None:
        await s.blocks.block([BlockSpec("203.0.113.6", 60, "first")])
        before = len(fake.kernel.batches)
        await s.blocks.block([BlockSpec("203.0.113.6", None, "for good")])
        (batch,) = fake.kernel.batches[before:]
        assert [next(iter(c)) for c in batch] == ["add", "delete", "add"]

    run(fake, permanent)
    assert fake.kernel.elements("block_v4")['"203.0.113.6"'] is None
