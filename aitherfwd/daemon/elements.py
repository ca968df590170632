"""The dynamic elements against the kernel after someone else changed nftables (layer L3).

Owns: putting back blocks, grants and resolved addresses — all of them after a table loss
(`restore_all`), the missing ones after a flushed set or a deleted element (`repair`).
The kernel is read in the writer thread; the block and grant tables are read and changed
only here, on the event loop that owns them, and the adds are handed to the writer in the
same step, so a change made after that point is written after them (an unblock is never
undone by a repair). Generations decides when; this module does it.
"""

from __future__ import annotations

import logging

from aitherfwd.clock import Clock
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.blocks_kernel import listed_blocks
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.ports import Kernel
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.dynamic.blockrecords import Key
from aitherfwd.egress.adopt import listed_sets
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b

log = logging.getLogger(__name__)
RESTORE_BATCH = 50_000  # elements per transaction of a restore
# stored blocks in the cold start's first transaction, the one that makes the table: it goes
# through libnftables as JSON (~10 µs per element); the rest follow by netlink at once
FIRST_RESTORE_BATCH = 5_000


async def restore_all(
    clock: Clock, writer: KernelWriter, blocks: BlockService, egress: EgressRuntime
) -> None:
    """After a table loss: every live block, grant and resolved address back, each part
    made from the tables as they are when it goes to the writer (a block lifted meanwhile
    is not put back: its delete is queued after the part that held it)."""
    for part in blocks.table.restore_live(clock.now(), RESTORE_BATCH):
        await writer.elements(part)
    await writer.elements(egress.restore_commands(clock.now(), domains=True))


async def repair(
    clock: Clock, writer: KernelWriter, blocks: BlockService, egress: EgressRuntime
) -> int:
    """The elements missing from the kernel's block, sandbox and domain sets put back (and
    block elements the store does not know adopted); how many were put back."""
    names = egress.repair_sets(clock.now())

    def listing(kernel: Kernel) -> tuple[dict[Key, float | None], dict[str, set[str] | None]]:
        return listed_blocks(kernel), listed_sets(kernel.set_elements, names)  # kernel only

    blocks_listed, sets_listed = await writer.call(listing, writes=False)
    now = clock.now()
    commands, restored = blocks.repair_commands(blocks_listed, now)
    grants = egress.repair_commands(sets_listed, now)
    try:
        await writer.elements(commands + grants)
    except ApplyError as exc:
        log.error("element repair refused code=%s error=%s", exc.code, exc.message)
        return 0
    return restored + b.element_count(grants)
