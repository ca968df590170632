"""Loading the block table and its kernel view (layer L1, pure).

Owns: `LoadingTable`, the part of the block table that adopts blocks as they are — the
store's rows at a cold start (streamed: `load_rows`, `load_batches`), a revert, the kernel's
elements — and makes the element adds that restore the kernel's block sets (after a table
loss, a drift repair: `restore_batches`, `restore_live`, `restore_keys`, `missing`,
`unknown`). The restore is made in batches as the kernel takes them.
"""

from __future__ import annotations

import itertools
import math
import socket
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from typing import Any

from aitherfwd.dynamic.blockbase import BlockRecords
from aitherfwd.dynamic.blockrecords import (
    V6,
    Batch,
    Block,
    BlockRow,
    Key,
    RestoreParts,
    pack,
    restore_batches,
    span,
)
from aitherfwd.dynamic.singles import MAX_RUNS, RUN_MIN, V4_END

# distinct (expiry, reason, source, created) remembered while loading: the store's rows of one
# request are adjacent, and a load of 1,000,000 blocks made one by one must not hold 1,000,000
BATCH_CACHE = 4096


def _cached_batch(
    batches: dict[tuple[float | None, str, str, float], Batch],
    row: tuple[float | None, str, str, float],
) -> Batch:
    """The load's one `Batch` of these (expiry, reason, source, created), the most recent
    BATCH_CACHE of them remembered."""
    batch = batches.get(row)
    if batch is None:
        if len(batches) >= BATCH_CACHE:
            batches.clear()
        batch = batches[row] = Batch(*row)
    return batch


def _row_key(text: object) -> Key | None:
    """The table key of a stored row's key other than an IPv4 address (IPv6, a prefix),
    or None for text that is no block key (a corrupt row)."""
    if not isinstance(text, str):
        return None
    if "/" not in text:
        return pack(text)
    try:
        span(text)
    except ValueError:
        return None
    return text


class LoadingTable(BlockRecords):
    """The block table's loads and its kernel view (see the module's docstring)."""

    def load(self, blocks: Iterable[Block]) -> None:
        """Adopt blocks as they are (from the store or the kernel), without commands. Rows
        that share expiry, reason, source and creation time share one `Batch`."""
        self.load_rows((b.key, b.expires_at, b.reason, b.source, b.created_at) for b in blocks)

    def load_rows(
        self,
        rows: Iterable[BlockRow],
        restore: RestoreParts | None = None,
        batches: dict[tuple[float | None, str, str, float], Batch] | None = None,
    ) -> int:
        """`load` from the store's tuples (key, expires_at, reason, source, created_at): the
        cold start's 1,000,000 rows, without a `Block` per row. A row that is not a block
        (a key that is not canonical text) is skipped. `restore`, when given, also receives
        the element add of each block loaded (its remaining timeout at `restore.now`);
        `batches`, the batch records of earlier chunks of the same load (a request's rows
        split over chunks stay one batch, and one run). Returns how many rows were read."""
        batches = {} if batches is None else batches  # shared by the chunks of one load
        # the dict itself while there is no run (a cold start): the loop's speed
        singles = self._singles if self._singles.runs else self._singles.loose
        expires: float | None = math.nan  # no row matches NaN
        reason, source, created = "", "", math.nan
        batch = Batch(None, "", "", 0.0)  # replaced at the first row
        joined: list[Key] | None = None  # the batch's expiry list (None: permanent)
        run4 = run6 = timeout = 0  # new addresses that joined `batch`, settled in bulk
        v4_to_bytes, af_inet, to_int = socket.inet_pton, socket.AF_INET, int.from_bytes
        sink = RestoreParts(0.0) if restore is None else restore  # without one: dropped
        now = sink.now
        a4, t4 = sink.v4.addresses.append, sink.v4.timeouts.append
        a6, t6 = sink.v6.addresses.append, sink.v6.timeouts.append
        read = 0
        for text, e, r, s, c in rows:
            read += 1
            try:  # the fast path of `pack` for an IPv4 address (canonical text only)
                key: Key = to_int(v4_to_bytes(af_inet, text), "big")
            except (OSError, ValueError, TypeError):  # IPv6, a prefix, or not a block key
                other = _row_key(text)
                if other is None:
                    continue  # a corrupt row: nothing could find it
                key = other
            if e != expires or c != created or r != reason or s != source:
                self._settle(batch, run4, run6)
                run4 = run6 = 0
                expires, reason, source, created = e, r, s, c  # rows of a request come together
                batch = _cached_batch(batches, (e, r, s, c))
                joined = batch.keys
                timeout = 0 if e is None else max(1, math.ceil(e - now))
            if not isinstance(key, int) or key in singles:  # a prefix, or a second row
                self._settle(batch, run4, run6)
                run4 = run6 = 0
                self._store(key, batch)
                sink.add(key, batch)
                continue
            singles[key] = batch
            if joined is not None:
                joined.append(key)
            if key < V6:
                run4 += 1
                a4(key)
                t4(timeout)
            else:
                run6 += 1
                a6(key ^ V6)
                t6(timeout)
        self._settle(batch, run4, run6)
        return read

    def load_batches(
        self, rows: Iterable[BlockRow], now: float, first: int, limit: int
    ) -> Iterator[list[Any]]:
        """The cold start's load and restore in one pass: `load_rows` a chunk of rows (the
        first `first`, then `limit` each), then yield the element adds (remaining timeouts)
        of the blocks that chunk loaded, so the kernel can take one chunk while the next is
        read. Every row is in the table once this is exhausted; `rows` hold no expired
        block (the store closed those). Yields nothing for a chunk with no block in it."""
        it = iter(rows)
        size = first
        batches: dict[tuple[float | None, str, str, float], Batch] = {}  # a request's one
        while True:  # the rows stream through: never a list of them
            restore = RestoreParts(now)
            read = self.load_rows(itertools.islice(it, size), restore, batches)
            cmds = restore.commands()
            del restore
            if cmds:
                yield cmds
            if read < size:
                self.compact()  # while the kernel takes the last chunk
                return  # a short chunk was the last
            size = limit

    def compact(self) -> int:
        """Move the dict's large groups of IPv4 addresses that share a batch (RUN_MIN or
        more: a bulk request's rows, restored at a cold start) into runs, the largest
        first, while there is room for a run. Returns how many addresses moved. A cold
        start of 1,000,000 such blocks: the dict and its ints (≈ 85 bytes a block) go."""
        singles = self._singles
        groups: dict[Batch, list[int]] = {}
        for key, batch in singles.loose.items():
            if key < V4_END and batch.run is None:
                groups.setdefault(batch, []).append(key)
        room = MAX_RUNS - len(singles.runs)
        big = sorted((g for g in groups.items() if len(g[1]) >= RUN_MIN), key=lambda g: -len(g[1]))
        del groups
        moved = 0
        loose = singles.loose
        for batch, keys in big[:room]:
            for key in keys:
                del loose[key]
            batch.run, _, _ = singles.add_run(keys, batch)  # room was counted: none dissolved
            if batch.keys is not None:  # what stays in the expiry list: IPv6 and prefixes
                batch.keys = [k for k in batch.keys if not isinstance(k, int) or k >= V4_END]
            moved += len(keys)
        if moved:
            singles.loose = dict(loose)  # a dict never shrinks by deletion: a fresh one
        return moved

    # --- the kernel's view -----------------------------------------------------------------

    def restore_batches(self, now: float, limit: float = math.inf) -> Iterator[list[Any]]:
        """Element adds for every live block with its remaining timeout (after a table
        loss), `limit` elements per yielded batch at most, made as they are consumed: the
        table must not change while this runs (the cold start runs it before serving)."""
        self._lapse(now)
        return restore_batches(self._singles.items(), self._prefixes, now, limit)

    def restore_commands(self, now: float) -> list[Any]:
        """Element adds for every live block, as one list (a re-apply in one transaction)."""
        return [cmd for batch in self.restore_batches(now) for cmd in batch]

    # --- drift repair: the kernel's listing is read elsewhere (off the event loop, never
    # touching this table); these compare it with the table where the table lives

    def unknown(self, listed: Collection[Key], now: float) -> list[Key]:
        """Keys of a listing that no live block here holds."""
        live = self._live_getter(listed, now)
        return [k for k in listed if live(k) is None]

    def _live_getter(self, keys: Collection[Key], now: float) -> Callable[[Key], Batch | None]:
        """`_live` for a pass over `keys`: the runs matched against them all at once when
        there are many (`Singles.lookup`), not bisected per key (a drift repair's listing of
        400,000 elements)."""
        get, prefixes = self._singles.lookup(keys), self._prefixes

        def live(key: Key) -> Batch | None:
            batch = get(key) if isinstance(key, int) else prefixes.get(key)
            if batch is None or (batch.expires_at is not None and batch.expires_at <= now):
                return None
            return batch

        return live

    def missing(self, listed: Container[Key], now: float, margin: float = 2.0) -> list[Key]:
        """Live keys absent from the kernel's listing, but not those due within `margin`
        seconds (the kernel may just have expired them)."""
        self._lapse(now)
        soon = now + margin
        return [
            k
            for table in (self._singles, self._prefixes)
            for k, batch in table.items()
            if k not in listed and (batch.expires_at is None or batch.expires_at > soon)
        ]

    def restore_live(self, now: float, limit: int) -> Iterator[list[Any]]:
        """Like `restore_batches`, for a restore while the table may change between parts
        (the caller awaits the kernel between them): over a copy of the keys, each part made
        when it is asked for and holding only the blocks still live and unchanged then."""
        self._lapse(now)
        keys: list[Key] = [*self._singles, *self._prefixes]
        for start in range(0, len(keys), limit):
            part = self.restore_keys(keys[start : start + limit], now)
            if part:
                yield part

    def restore_keys(self, keys: Collection[Key], now: float) -> list[Any]:
        """Element adds (remaining timeouts) for those of `keys` still live."""
        singles: dict[int, Batch] = {}
        prefixes: dict[str, Batch] = {}
        live = self._live_getter(keys, now)
        for k in keys:
            batch = live(k)
            if batch is None:
                continue
            if isinstance(k, int):
                singles[k] = batch
            else:
                prefixes[k] = batch
        return [
            cmd
            for part in restore_batches(singles.items(), prefixes, now, math.inf)
            for cmd in part
        ]
