"""The conntrack cut after a ban is skipped for a source the event-fed table knows holds no
entry, and only when that table is complete (events live, a dump taken, nothing lost, no
dump running). Fakes and a fake clock; no root, milliseconds."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from aitherfwd.clock import FakeClock
from aitherfwd.control.schema import BlockSpec
from aitherfwd.daemon.detection import Detection
from aitherfwd.testing import fake_daemon
from tests.unit.test_services import POLICY, run

HELD = socket.inet_pton(socket.AF_INET, "203.0.113.7")
UNKNOWN = socket.inet_pton(socket.AF_INET6, "2001:db8::1")


async def _threats(specs: Any) -> None:
    return None


def test_only_a_complete_table_that_knows_no_entry_skips_the_cut() -> None:
    det = Detection(FakeClock(), None, _threats, 60.0, listen=False)  # type: ignore[arg-type]
    assert det.may_hold(UNKNOWN)  # no event socket: nothing is known
    det.events = object()  # type: ignore[assignment]  # a live event socket
    assert det.may_hold(UNKNOWN)  # no full dump yet
    det.resyncs = 1
    det.table.add(1, HELD)
    assert det.may_hold(HELD) and not det.may_hold(UNKNOWN)
    det._resync_now.set()  # events were lost: a dump is due
    assert det.may_hold(UNKNOWN)
    det._resync_now.clear()
    det._held = []  # a dump is running
    assert det.may_hold(UNKNOWN)


def test_a_ban_queues_a_cut_only_for_a_source_that_may_hold_entries(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    s = fake.services
    s.blocks.may_hold = lambda source: source == HELD

    async def ban() -> int:
        specs = [BlockSpec("203.0.113.7", 600, "t"), BlockSpec("203.0.113.8", 600, "t")]
        await s.blocks.block(specs)
        await s.blocks.block([BlockSpec("198.51.100.0/24", 600, "t")])  # a prefix: no cut
        return s.blocks._cuts.qsize()

    assert run(fake, ban) == 1 and s.blocks.cuts_skipped == 1
    s.ports.store.close()
