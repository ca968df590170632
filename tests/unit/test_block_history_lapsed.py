"""A block that lapsed but was not yet pruned (the housekeeping prunes every 2 s) and is
blocked again: its history row is closed as expired at that moment, and the new block
opens the only open row — not two open rows closed together later (the real services on
fakes, a real SQLite store; no root)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aitherfwd.control.schema import BlockSpec
from aitherfwd.testing import fake_daemon

POLICY = "version: 1\nsettings: {default_policy: allow}\n"


def test_a_lapsed_block_blocked_again_is_closed_as_expired_first(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            blocks = fake.services.blocks
            await blocks.block([BlockSpec("10.1.2.3", 60, "first")])
            await blocks.block([BlockSpec("10.1.2.4", 600, "other")])
            fake.clock.advance(61)
            await blocks.block([BlockSpec("10.1.2.3", 600, "second")])
        finally:
            task.cancel()

    asyncio.run(main())
    second, first = fake.services.ports.store.history(["10.1.2.3"])
    assert (second.reason, second.ended_at) == ("second", None)
    assert first.reason == "first" and first.end_reason == "expired"
    assert first.ended_at == first.started_at + 61
    events = [e["event"] for e in fake.audit_events()]
    assert events.count("block_expired") == 1 and events.count("blocked") == 3
    active = fake.services.blocks.table.active(fake.clock.now())
    assert [(b.key, b.reason) for b in active] == [("10.1.2.3", "second"), ("10.1.2.4", "other")]
    fake.services.ports.store.close()


def test_a_block_a_reader_pruned_is_still_recorded_as_expired(tmp_path: Path) -> None:
    """A listing, the status counts or the drift check may be the first to meet a lapsed
    block: they prune it, and the next `expire` still records it — ended in the store as
    expired, one `block_expired` audit line, the reputation hook told."""
    fake = fake_daemon(tmp_path, POLICY)
    told: list[str] = []

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            blocks = fake.services.blocks
            blocks.on_expired = lambda blk, now: told.append(blk.key)
            await blocks.block([BlockSpec(f"10.1.3.{i}", 60, "x") for i in range(3)])
            fake.clock.advance(61)
            now = fake.clock.now()
            assert blocks.table.active(now) == []  # the listing pruned them...
            assert blocks.table.counts(now)["block_v4"] == 0
            assert blocks.expire() == 3  # ...and they are recorded all the same
            assert blocks.expire() == 0
        finally:
            task.cancel()

    asyncio.run(main())
    store = fake.services.ports.store
    assert [h.end_reason for h in store.history(["10.1.3.1"])] == ["expired"]
    assert store.load_blocks(fake.clock.now()) == []
    events = [e["event"] for e in fake.audit_events()]
    assert events.count("block_expired") == 3 and sorted(told) == [
        "10.1.3.0",
        "10.1.3.1",
        "10.1.3.2",
    ]
    fake.services.ports.store.close()
