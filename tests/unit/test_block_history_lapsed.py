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
