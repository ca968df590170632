"""The records of the block table and their books (layer L1, pure).

Owns: `BlockRecords`, the state every part of the table shares — single addresses by
packed int and prefixes by text, each to its shared `Batch`; the prefixes' span index; the
expiry heap; the per-set and per-kind counts — and the operations that keep those books
right as keys come and go (`_store`, `_join`, `_drop`, `_release`, `_settle`, `prune`).
`blockload.LoadingTable` adds the loads and the kernel's view, `blocks.BlockTable` the
checks and changes.

Compact by design: a daemon must hold 1,000,000 blocks in ≤ 150 MB of RSS. Measured with
tracemalloc (tests/unit/test_block_table_compact.py), a single-address block costs ≈ 80-90
bytes (IPv6 ≈ 105), down from ≈ 210 (a `Block` dataclass per block, its key text, a slot):
- a single address is keyed by its packed int (IPv6 | 1 << 128): 32-44 bytes instead of
  a 50-70 byte str, plus its dict slot (≈ 40 bytes at 1,000,000);
- the value is a shared `Batch` (expiry, reason, source, created) — one per request or per
  run of equal rows in a load — so a block costs its key, its slot and 8 bytes in its
  batch's key list (the expiry index); a block made alone carries its own batch (≈ 250
  bytes): the worst case, not the common one;
- `Block` objects are made only on demand (get, covering, active, prune, remove);
- one expiry index, a heap of batches: `prune` pops what is due and never walks the table
  (a walk of 1,000,000 blocks cost ~30 ms of the event loop every 2 s); a key that left a
  batch (re-blocked, lifted) is skipped by identity, an emptied batch drops its key list;
- prefix blocks are few (overlap checks, lookups scan them): text key and integer span;
- a bulk request's IPv4 addresses (RUN_MIN or more under one batch) are a run of
  `singles.Singles`: a sorted array of 4-byte ints and a live byte each, ≈ 5 bytes a block
  (a 100,000-ban request: 16 MB of RSS in the dict, 3 MB as a run), reached from the
  expiry heap through `Batch.run` and expired in one step.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from aitherfwd.dynamic.blockrecords import (
    BLOCK_SET_NAMES,
    KINDS,
    LOOPBACK,
    V6,
    Batch,
    Block,
    Key,
    grouped,
    pack,
    set_of,
    span,
    text_of,
)
from aitherfwd.dynamic.singles import Singles
from aitherfwd.dynamic.spans import DisjointSpans
from aitherfwd.policy.model import IPNetwork


class BlockRecords:
    """Active blocks: packed single addresses and prefix texts, each to its shared `Batch`.
    Expired entries are pruned through the expiry heap."""

    def __init__(self, protected: Sequence[IPNetwork] = ()) -> None:
        self._singles = Singles()  # a dict, and bulk requests' IPv4 addresses as runs
        self._prefixes: dict[str, Batch] = {}  # few: scanned on lookups and overlap checks
        self._spans = DisjointSpans()  # the prefixes, indexed: lookups and overlap checks
        self._heap: list[Batch] = []  # batches with an expiry, the earliest first
        self._dead = 0  # batches in the heap that hold no block any more
        self._counts = dict.fromkeys(BLOCK_SET_NAMES, 0)
        self._kinds: dict[tuple[str, str], int] = dict.fromkeys(KINDS, 0)
        self.protected = LOOPBACK + tuple(protected)
        # the kernel updates an element's timeout on a plain `add` (probed at start): a
        # re-block from one timeout to another is then one add, not add-delete-add
        self.update_in_place = False
        # blocks a reader pruned (`_lapse`), until the owner's `take_lapsed` records them
        self.lapsed: list[Block] = []

    @property
    def protected(self) -> tuple[IPNetwork, ...]:
        return self._protected

    @protected.setter
    def protected(self, nets: tuple[IPNetwork, ...]) -> None:
        self._protected = nets
        self._protected_ranges = [
            (n.version, int(n.network_address), int(n.broadcast_address)) for n in nets
        ]
        merged: list[list[int]] = []  # the IPv4 ones merged, for `checked_keys`' bisect
        for _, lo, hi in sorted(r for r in self._protected_ranges if r[0] == 4):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._v4_starts = [lo for lo, _ in merged]
        self._v4_ends = [hi for _, hi in merged]

    def __len__(self) -> int:
        return len(self._singles) + len(self._prefixes)

    # --- the records -----------------------------------------------------------------------

    def _key(self, text: str) -> Key | None:
        """The table key of a block key's text (None: no block could have this text)."""
        if "/" in text:
            return text
        return pack(text)

    def _batch_of(self, key: Key) -> Batch | None:
        if isinstance(key, int):
            return self._singles.get(key)
        return self._prefixes.get(key)

    def _live(self, key: Key, now: float) -> Batch | None:
        batch = self._batch_of(key)
        if batch is None or (batch.expires_at is not None and batch.expires_at <= now):
            return None
        return batch

    def _store(self, key: Key, batch: Batch) -> None:
        if isinstance(key, int):
            old = self._singles.get(key)
            self._singles[key] = batch
            v6 = key >= V6
        else:
            old = self._prefixes.get(key)
            self._prefixes[key] = batch
            self._spans.add(*span(key), key)
            v6 = ":" in key
        if old is batch:
            return
        if old is None:
            self._counts[set_of(key)] += 1
        else:
            self._kinds[old.kind(v6)] -= 1
            self._release(old)
        self._kinds[batch.kind(v6)] += 1
        self._join(key, batch)

    def _join(self, key: Key, batch: Batch) -> None:
        """`key` holds `batch` now: into the expiry index with it."""
        if batch.keys is not None:
            if not batch.queued:
                heapq.heappush(self._heap, batch)
                batch.queued = True
            elif batch.live == 0:
                self._dead -= 1  # emptied, and holding a key again
            batch.keys.append(key)
        batch.live += 1

    def _drop(self, key: Key) -> Batch:
        if isinstance(key, int):
            batch = self._singles.pop(key)
        else:
            batch = self._prefixes.pop(key)
            version, lo, _ = span(key)
            self._spans.discard(version, lo, key)
        self._forget(key, batch)
        return batch

    def _forget(self, key: Key, batch: Batch) -> None:
        """The books of `key` leaving the table, which it held under `batch`."""
        self._counts[set_of(key)] -= 1
        v6 = key >= V6 if isinstance(key, int) else ":" in key
        self._kinds[batch.kind(v6)] -= 1
        self._release(batch)

    def _release(self, batch: Batch) -> None:
        """A key left `batch`: forget an emptied batch's keys, compact a mostly stale list,
        and rebuild the heap when most of it is emptied batches (bounded memory under
        re-blocks and unblocks, amortised O(1))."""
        batch.live -= 1
        keys = batch.keys
        if keys is None:
            return
        if batch.live == 0:
            keys.clear()
            self._dead += 1
            if self._dead > 64 and self._dead * 2 > len(self._heap):
                for h in self._heap:
                    h.queued = h.live > 0
                self._heap = [h for h in self._heap if h.queued]
                heapq.heapify(self._heap)
                self._dead = 0
        elif len(keys) > 64 and batch.live * 2 < len(keys):
            batch.keys = [k for k in keys if self._batch_of(k) is batch]

    def _lapse(self, now: float) -> None:
        """`prune` for a reader (a listing, the counts, the kernel's view): what lapsed is
        kept in `lapsed` for the table's owner, who records it (the store's history, the
        audit line, reputation) — a reader pruning it away must not lose the expiry."""
        self.lapsed += self.prune(now)

    def take_lapsed(self) -> list[Block]:
        """The blocks readers pruned since the last call (`_lapse`), oldest first."""
        out, self.lapsed = self.lapsed, []
        return out

    def prune(self, now: float) -> list[Block]:
        """Forget the blocks due by `now`, earliest first: pops due batches off the heap."""
        heap, gone = self._heap, []
        while heap and heap[0].expires_at is not None and heap[0].expires_at <= now:
            batch = heapq.heappop(heap)
            batch.queued = False
            if batch.live == 0:
                self._dead -= 1
                continue
            if batch.run is not None:
                gone += self._expire_run(batch)
            for key in batch.keys or ():
                if self._batch_of(key) is batch:
                    gone.append(batch.block(text_of(key)))
                    self._drop(key)
        return gone

    def _book(self, batch: Batch, v4: int, v6: int) -> None:
        """Count `v4` IPv4 and `v6` IPv6 single addresses into (negative: out of) the
        per-set and per-kind books, all under `batch`."""
        self._counts["block_v4"] += v4
        self._counts["block_v6"] += v6
        self._kinds[batch.kind(False)] += v4
        self._kinds[batch.kind(True)] += v6

    def _forget_many(self, taken: dict[int, Batch]) -> None:
        """`_forget` of many single addresses, batch by batch (a re-block of 100,000)."""
        if len(taken) < 64:
            for key, batch in taken.items():
                self._forget(key, batch)
            return
        self._forget_groups(grouped(taken))

    def _forget_groups(self, groups: dict[Batch, list[int]]) -> None:
        """`_forget_many` of keys already grouped by their batch."""
        for batch, keys in groups.items():
            v6 = sum(1 for k in keys if k >= V6)
            self._book(batch, v6 - len(keys), -v6)
            batch.live -= len(keys) - 1
            self._release(batch)  # the last one: its books (an emptied batch, a stale list)

    def _expire_run(self, batch: Batch) -> list[Block]:
        """The blocks of `batch`'s run, gone with it in one step (IPv4 addresses only)."""
        run, batch.run = batch.run, None
        if run is None or not run.live:
            return []
        gone = [batch.block(text_of(k)) for k in run.held()]
        held = run.live
        self._singles.drop_run(run)
        self._book(batch, -held, 0)
        batch.live -= held
        return gone

    def _settle(self, batch: Batch, run4: int, run6: int) -> None:
        """`run4` IPv4 and `run6` IPv6 addresses new to the table joined `batch` (the fast
        path of `load_rows`, counted in bulk): what `_store` and `_join` do per key, but
        the expiry list, which the caller filled."""
        run = run4 + run6
        if not run:
            return
        self._book(batch, run4, run6)
        if batch.keys is not None:
            if not batch.queued:
                heapq.heappush(self._heap, batch)
                batch.queued = True
            elif batch.live == 0:
                self._dead -= 1  # emptied, and holding keys again
        batch.live += run

    def counts(self, now: float | None = None) -> dict[str, int]:
        """Blocks per kernel set, kept as blocks come and go (no scan); with `now`, expired
        ones are pruned first."""
        if now is not None:
            self._lapse(now)
        return dict(self._counts)

    def kinds(self) -> dict[tuple[str, str], int]:
        """Blocks per (family, kind), kept as blocks come and go: O(1), no pruning (expired
        blocks leave at the next prune, within the drift-check interval)."""
        return dict(self._kinds)
