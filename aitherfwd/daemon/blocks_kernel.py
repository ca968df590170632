"""The kernel's view of the block sets (layer L3): cold-start restore, reconcile, repair.

Owns: `BlockKernelView`, the part of `blocking.BlockService` that puts the block table
into the kernel's sets — the cold start's batches streamed from the store, the restore
after a table loss, and the reconciliation of the kernel's block sets with the table
(adopting what the kernel holds and the store does not know, adding what the kernel
lacks) — and `listed_blocks`, the kernel's block elements as table keys. The table itself
and the order of block changes are `BlockService`'s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aitherfwd.adapters.store import Store
from aitherfwd.daemon.ports import Kernel
from aitherfwd.dynamic.blockrecords import Key, pack, text_of
from aitherfwd.dynamic.blocks import Block, BlockTable, address_text
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n


class BlockKernelView:
    """Restore and reconciliation of the block sets; `BlockService` holds the state (the
    methods run in the writer's thread, or on the loop where they say so)."""

    table: BlockTable
    store: Store
    on_blocked: Callable[[Sequence[Block], float], None]

    def restore_commands(self, now: float) -> list[Any]:
        return self.table.restore_commands(now)

    def load_batches(self, now: float, first: int, limit: int) -> Iterator[list[Any]]:
        """Cold start: the store's live blocks streamed into the compact table, a chunk of
        rows at a time, each chunk's element adds yielded as soon as it is loaded (the first
        `first` rows, then `limit`): `BlockTable.load_batches`. Exhaust it before anything
        else reads the table or writes the store."""
        return self.table.load_batches(self.store.iter_rows(now), now, first, limit)

    def restore_batches(self, now: float, limit: int) -> Iterator[list[Any]]:
        """The restore in batches of `limit` elements, made as the kernel takes them."""
        return self.table.restore_batches(now, limit)

    def reconcile(self, kernel: Kernel, now: float) -> int:
        """Cold start (nothing is served yet, so the table cannot change meanwhile): list the
        kernel's block sets, adopt what the store does not know, add what the kernel lacks.
        Returns how many were added."""
        commands, missing = self.repair_commands(listed_blocks(kernel), now)
        if commands:
            kernel.run(commands)
        return missing

    def repair_commands(self, listed: dict[Key, float | None], now: float) -> tuple[list[Any], int]:
        """On the event loop, with the kernel's listing (`listed_blocks`, read in the writer
        thread): adopt the kernel's elements this table does not hold (kind `kernel`), and
        the adds for the live blocks the kernel lacks (not those about to expire). Made and
        handed to the writer in one step, so an unblock after it is written after it."""
        found = [
            Block(text_of(key), now + exp if exp else None, "found in the kernel", "kernel", now)
            for key in self.table.unknown(listed, now)
            for exp in (listed[key],)
        ]
        if found:
            self.table.load(found)
            self.store.save_blocks(found)
            self.on_blocked(found, now)
        missing = self.table.missing(listed, now)
        return self.table.restore_keys(missing, now), len(missing)


def listed_blocks(kernel: Kernel) -> dict[Key, float | None]:
    """The kernel's block elements as table keys with their remaining seconds (None: no
    timeout). Reads only the kernel: safe in the writer thread while the loop serves."""
    out: dict[Key, float | None] = {}
    for s in n.BLOCK_SETS:
        for elem in kernel.set_elements(s.name):
            body = b.element_fields(elem)
            val = body["val"]
            text = (
                f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else val
            )
            canon = address_text(ipaddress.ip_network(text))
            key = canon if "/" in canon else pack(canon)
            if key is not None:
                out[key] = body.get("expires")
    return out
