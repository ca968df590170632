"""The table of active blocks and the kernel commands that change it (layer L1, pure).

Owns: `BlockTable` (what is blocked, until when, why), the protected ranges that can never
be blocked, and the element commands for a change; `Block` and the key helpers live in
`blockrecords` and are re-exported here. Time is an argument; nothing here talks to the
kernel or the disk.

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
- the restore is made in batches as the kernel takes them (`restore_batches`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import socket
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import Any

from aitherfwd.dynamic.blockrecords import (
    BLOCK_SET_NAMES,
    KINDS,
    LOOPBACK,
    MANUAL,
    PERMANENT,
    TEMPORARY,
    V6,
    Batch,
    Block,
    BlockError,
    BlockRow,
    Key,
    RestoreParts,
    address_text,
    canonical_v4,
    check_batch,
    delete_command,
    pack,
    restore_batches,
    set_for_key,
    set_of,
    span,
    text_of,
    unpack,
)
from aitherfwd.dynamic.packedelements import PackedElements
from aitherfwd.dynamic.spans import DisjointSpans
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import IPAddress, IPNetwork

__all__ = [
    "BLOCK_SET_NAMES",
    "KINDS",
    "LOOPBACK",
    "MANUAL",
    "PERMANENT",
    "TEMPORARY",
    "Batch",
    "Block",
    "BlockError",
    "BlockRow",
    "BlockTable",
    "address_text",
    "canonical_v4",
    "check_batch",
    "set_for_key",
]
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


class BlockTable:
    """Active blocks: packed single addresses and prefix texts, each to its shared `Batch`.
    Expired entries are pruned through the expiry heap."""

    def __init__(self, protected: Sequence[IPNetwork] = ()) -> None:
        self._singles: dict[int, Batch] = {}
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
            v6 = key >= V6
        else:
            batch = self._prefixes.pop(key)
            version, lo, _ = span(key)
            self._spans.discard(version, lo, key)
            v6 = ":" in key
        self._counts[set_of(key)] -= 1
        self._kinds[batch.kind(v6)] -= 1
        self._release(batch)
        return batch

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

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str, now: float) -> Block | None:
        k = self._key(key)
        batch = None if k is None else self._live(k, now)
        return None if batch is None else batch.block(key)

    def active(self, now: float) -> list[Block]:
        self.prune(now)
        out = [batch.block(unpack(k)) for k, batch in self._singles.items()]
        out += [batch.block(k) for k, batch in self._prefixes.items()]
        out.sort(key=lambda blk: blk.key)
        return out

    def expiries(self) -> list[tuple[Key, float | None]]:
        """(key, expiry) of every block held, unsorted, expired ones included: a cheap copy
        (no `Block` objects) for a reader outside the event loop; `text_of` names a key."""
        out: list[tuple[Key, float | None]] = [(k, b.expires_at) for k, b in self._singles.items()]
        out += [(k, b.expires_at) for k, b in self._prefixes.items()]
        return out

    def _covering_prefix(self, version: int, n: int, now: float) -> str | None:
        for key in self._spans.overlapping(version, n, n):  # one range at most holds a point
            return key if self._live(key, now) is not None else None
        return None

    def covering(self, address: IPAddress, now: float) -> Block | None:
        """The live block that stops this address: its own, or a prefix holding it."""
        n = int(address)
        batch = self._live(n | V6 if address.version == 6 else n, now)
        if batch is not None:
            return batch.block(str(address))  # an address's str() is its canonical text
        if not self._prefixes:
            return None
        key = self._covering_prefix(address.version, n, now)
        return None if key is None else self._prefixes[key].block(key)

    def lookup(self, address: IPAddress, now: float) -> tuple[float | None, str] | None:
        """The evaluator's view: is this address blocked right now, until when, why."""
        blk = self.covering(address, now)
        return (blk.expires_at, blk.reason) if blk else None

    def check(self, target: IPNetwork | str, now: float) -> None:
        """Raise BlockError when `target` (a network, or a block key) may not be blocked or
        conflicts with a prefix block."""
        key = target if isinstance(target, str) else address_text(target)
        version, lo, hi = span(key)
        for p, (v, plo, phi) in zip(self.protected, self._protected_ranges, strict=True):
            if v == version and lo <= phi and plo <= hi:  # the two ranges overlap
                raise BlockError(
                    f"{key} overlaps {p}, which is "
                    "never blocked (loopback, the management zone, never_block)",
                    code="E-PROTECTED",
                )
        if "/" not in key:
            return
        for other in self._spans.overlapping(version, lo, hi):
            if other != key and self._live(other, now) is not None:
                raise BlockError(
                    f"{key} overlaps the existing "
                    f"prefix block {other}; unblock it first or block a disjoint prefix",
                    code="E-BLOCK-OVERLAP",
                )

    # --- changes ---------------------------------------------------------------------------

    def put(
        self, blocks: Iterable[Block], now: float, keys: Sequence[Key | None] | None = None
    ) -> list[Any]:
        """Record blocks; return the kernel commands (one transaction, one command per set
        and step — a batch of 100,000 elements is a handful of commands) that make them so.
        `keys`: the blocks' table keys when the caller has them (`checked_keys`). A single
        address the table does not hold (a bulk request's common case) is adopted in a
        pass of its own (`_adopt`); single addresses go out packed (`PackedElements`)."""
        touch: dict[str, list[Any]] = {}  # re-blocks: add (no-op if present), then delete...
        adds: dict[str, Any] = {}  # ...then everything added with its timeout
        packed = {"block_v4": PackedElements(4), "block_v6": PackedElements(6)}
        batches: dict[tuple[float | None, str, str, float], Batch] = {}
        fresh: dict[Batch, list[int]] = {}
        timeouts: dict[float | None, int | None] = {}  # one int per distinct expiry
        blocks = list(blocks)
        # the keys first, in a loop of their own: the ints that stay then share heap pages
        # with each other, not with the request's short-lived JSON (whose pages could
        # otherwise never go back to the kernel: measured, +40 MB of RSS per 100,000)
        if keys is None:
            keys = [self._key(blk.key) for blk in blocks]
        singles = self._singles
        for new, key in zip(blocks, keys, strict=True):
            if key is None:
                raise ValueError(f"{new.key!r} is not a canonical block key")
            expires = new.expires_at
            if expires not in timeouts:
                timeouts[expires] = new.remaining(now)
            fresh_key = isinstance(key, int) and key not in singles
            created = new.created_at if fresh_key else self._created(key, new, now, touch)
            ident = (expires, new.reason, new.source, created)
            batch = batches.get(ident)
            if batch is None:
                batch = batches[ident] = Batch(*ident)
            if isinstance(key, int):
                packed[set_of(key)].append(key ^ V6 if key >= V6 else key, timeouts[expires])
            else:
                adds.setdefault(set_of(key), []).append(b.timed(new.value(), timeouts[expires]))
            if fresh_key and isinstance(key, int):
                singles[key] = batch  # held at once: a repeated key is not fresh again
                fresh.setdefault(batch, []).append(key)
            else:
                self._store(key, batch)
        for batch, held in fresh.items():
            self._adopt(held, batch)
        adds.update((name, elements) for name, elements in packed.items() if elements)
        cmds: list[Any] = [b.add(b.element(name, v)) for name, v in sorted(touch.items())]
        cmds += [{"delete": b.element(name, v)} for name, v in sorted(touch.items())]
        cmds += [b.add(b.element(name, v)) for name, v in sorted(adds.items())]
        return cmds

    def _created(self, key: Key, new: Block, now: float, touch: dict[str, list[Any]]) -> float:
        """`new` replaces what `key` holds: the creation time it keeps, and the element on
        the touch list when the kernel needs the add-delete-add to take the new timeout."""
        existing = self._live(key, now)
        if existing is None:
            return new.created_at
        timed = existing.expires_at is not None and new.expires_at is not None
        if not (self.update_in_place and timed):
            # the element may expire in the kernel at any moment: add, delete, add
            # again with the new timeout is valid whatever the kernel holds now
            touch.setdefault(set_of(key), []).append(new.value())
        return existing.created_at

    def _adopt(self, keys: list[int], batch: Batch) -> None:
        """The bookkeeping of `_store` for single addresses just put into `_singles` under
        `batch` that it did not hold before, all at once."""
        v6 = sum(1 for k in keys if k >= V6)
        v4 = len(keys) - v6
        self._counts["block_v4"] += v4
        self._counts["block_v6"] += v6
        self._kinds[batch.kind(False)] += v4
        self._kinds[batch.kind(True)] += v6
        if batch.keys is not None:
            if not batch.queued:  # the loop of `put` may have queued it (`_join`)
                heapq.heappush(self._heap, batch)
                batch.queued = True
            batch.keys.extend(keys)
        batch.live += len(keys)

    def checked_keys(self, texts: Sequence[str], now: float, check: bool = True) -> list[Key]:
        """The table keys of block key texts, for `put`, each `check`ed on the way (a
        single IPv4 address, a bulk request's usual, by one bisect over the protected
        ranges; only a hit goes to `check` for its message)."""
        out: list[Key] = []
        starts, ends = self._v4_starts, self._v4_ends
        for text in texts:
            key = self._key(text)
            if key is None:
                raise ValueError(f"{text!r} is not a canonical block key")
            if not check:
                pass
            elif isinstance(key, int) and key < V6:
                i = bisect.bisect_right(starts, key) - 1
                if i >= 0 and key <= ends[i]:
                    self.check(text, now)
            else:
                self.check(text, now)
            out.append(key)
        return out

    def held(self, keys: Sequence[Key], texts: Sequence[str], now: float) -> dict[str, Batch]:
        """The live blocks among `keys` (with their texts) as their records by text: what a
        change replaces (`Batch.block(text)` is the block; made only when it is needed)."""
        singles, out = self._singles, {}
        for key, text in zip(keys, texts, strict=True):
            batch = singles.get(key) if isinstance(key, int) else self._prefixes.get(key)
            if batch is not None and (batch.expires_at is None or batch.expires_at > now):
                out[text] = batch
        return out

    def remove(self, key: str, now: float) -> tuple[Block, list[Any]] | None:
        k = self._key(key)
        batch = None if k is None else self._live(k, now)
        if k is None or batch is None:
            return None
        self._drop(k)
        blk = batch.block(key)
        value, name = blk.value(), blk.set_name
        return blk, [b.add(b.element(name, [value])), delete_command(name, value)]

    def prune(self, now: float) -> list[Block]:
        """Forget the blocks due by `now`, earliest first: pops due batches off the heap."""
        heap, gone = self._heap, []
        while heap and heap[0].expires_at is not None and heap[0].expires_at <= now:
            batch = heapq.heappop(heap)
            batch.queued = False
            if batch.live == 0:
                self._dead -= 1
                continue
            for key in batch.keys or ():
                if self._batch_of(key) is batch:
                    gone.append(batch.block(text_of(key)))
                    self._drop(key)
        return gone

    def load(self, blocks: Iterable[Block]) -> None:
        """Adopt blocks as they are (from the store or the kernel), without commands. Rows
        that share expiry, reason, source and creation time share one `Batch`."""
        self.load_rows((b.key, b.expires_at, b.reason, b.source, b.created_at) for b in blocks)

    def load_rows(self, rows: Iterable[BlockRow], restore: RestoreParts | None = None) -> int:
        """`load` from the store's tuples (key, expires_at, reason, source, created_at): the
        cold start's 1,000,000 rows, without a `Block` per row. A row that is not a block
        (a key that is not canonical text) is skipped. `restore`, when given, also receives
        the element add of each block loaded (its remaining timeout at `restore.now`).
        Returns how many rows were read."""
        batches: dict[tuple[float | None, str, str, float], Batch] = {}
        singles = self._singles
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

    def _settle(self, batch: Batch, run4: int, run6: int) -> None:
        """`run4` IPv4 and `run6` IPv6 addresses new to the table joined `batch` (the fast
        path of `load_rows`, counted in bulk): what `_store` and `_join` do per key, but
        the expiry list, which the caller filled."""
        run = run4 + run6
        if not run:
            return
        self._counts["block_v4"] += run4
        self._counts["block_v6"] += run6
        self._kinds[batch.kind(False)] += run4
        self._kinds[batch.kind(True)] += run6
        if batch.keys is not None:
            if not batch.queued:
                heapq.heappush(self._heap, batch)
                batch.queued = True
            elif batch.live == 0:
                self._dead -= 1  # emptied, and holding keys again
        batch.live += run

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
        while True:  # the rows stream through: never a list of them
            restore = RestoreParts(now)
            read = self.load_rows(itertools.islice(it, size), restore)
            cmds = restore.commands()
            del restore
            if cmds:
                yield cmds
            if read < size:
                return  # a short chunk was the last
            size = limit

    # --- the kernel's view -----------------------------------------------------------------

    def restore_batches(self, now: float, limit: float = math.inf) -> Iterator[list[Any]]:
        """Element adds for every live block with its remaining timeout (after a table
        loss), `limit` elements per yielded batch at most, made as they are consumed: the
        table must not change while this runs (the cold start runs it before serving)."""
        self.prune(now)
        return restore_batches(self._singles, self._prefixes, now, limit)

    def restore_commands(self, now: float) -> list[Any]:
        """Element adds for every live block, as one list (a re-apply in one transaction)."""
        return [cmd for batch in self.restore_batches(now) for cmd in batch]

    # --- drift repair: the kernel's listing is read elsewhere (off the event loop, never
    # touching this table); these compare it with the table where the table lives

    def unknown(self, listed: Iterable[Key], now: float) -> list[Key]:
        """Keys of a listing that no live block here holds."""
        return [k for k in listed if self._live(k, now) is None]

    def missing(self, listed: Container[Key], now: float, margin: float = 2.0) -> list[Key]:
        """Live keys absent from the kernel's listing, but not those due within `margin`
        seconds (the kernel may just have expired them)."""
        self.prune(now)
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
        self.prune(now)
        keys: list[Key] = [*self._singles, *self._prefixes]
        for start in range(0, len(keys), limit):
            part = self.restore_keys(keys[start : start + limit], now)
            if part:
                yield part

    def restore_keys(self, keys: Iterable[Key], now: float) -> list[Any]:
        """Element adds (remaining timeouts) for those of `keys` still live."""
        singles: dict[int, Batch] = {}
        prefixes: dict[str, Batch] = {}
        for k in keys:
            batch = self._live(k, now)
            if batch is None:
                continue
            if isinstance(k, int):
                singles[k] = batch
            else:
                prefixes[k] = batch
        return [cmd for part in restore_batches(singles, prefixes, now, math.inf) for cmd in part]

    def counts(self, now: float | None = None) -> dict[str, int]:
        """Blocks per kernel set, kept as blocks come and go (no scan); with `now`, expired
        ones are pruned first."""
        if now is not None:
            self.prune(now)
        return dict(self._counts)

    def kinds(self) -> dict[tuple[str, str], int]:
        """Blocks per (family, kind), kept as blocks come and go: O(1), no pruning (expired
        blocks leave at the next prune, within the drift-check interval)."""
        return dict(self._kinds)
