"""The table of active blocks and the kernel commands that change it (layer L1, pure).

Owns: `BlockTable` (what is blocked, until when, why): its reads, the checks of a block
(protected ranges that can never be blocked, overlapping prefixes) and the changes with
the element commands that make them so. Its records and their books are
`blockbase.BlockRecords`, its loads and kernel view `blockload.LoadingTable`; `Block` and
the key helpers live in `blockrecords` and are re-exported here. Time is an argument;
nothing here talks to the kernel or the disk.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Sequence
from typing import Any, cast

from aitherfwd.dynamic.blockload import LoadingTable
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
    BlockList,
    BlockRow,
    Key,
    address_text,
    canonical_v4,
    check_batch,
    delete_command,
    grouped,
    set_for_key,
    set_of,
    span,
    unpack,
)
from aitherfwd.dynamic.packedelements import PackedElements
from aitherfwd.dynamic.singles import RUN_MIN
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
    "BlockList",
    "BlockRow",
    "BlockTable",
    "address_text",
    "canonical_v4",
    "check_batch",
    "set_for_key",
]


class BlockTable(LoadingTable):
    """Active blocks (records and books: `BlockRecords`; loads and the kernel's view:
    `LoadingTable`): reads, the checks of a block, and the changes with their commands."""

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str, now: float) -> Block | None:
        k = self._key(key)
        batch = None if k is None else self._live(k, now)
        return None if batch is None else batch.block(key)

    def active(self, now: float) -> list[Block]:
        self._lapse(now)
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

    def put_list(
        self, blocks: BlockList, now: float, keys: list[int]
    ) -> tuple[list[Any], dict[Batch, list[int]]]:
        """`put` of a `BlockList` of distinct IPv4 addresses (`keys`, packed: a bulk
        request's), and the keys held before by the batch they held (lapsed ones
        included). The keys held already leave the table all at once, grouped as they
        come out, every key is held again a batch at a time (`_adopt`) and goes out in one
        packed add."""
        groups = self._singles.take_grouped(keys)
        self._forget_groups(groups)
        expires, reason, source = blocks.expires_at, blocks.reason, blocks.source
        held: dict[float, list[int]] = {blocks.created_at: []}  # by creation time kept
        touch: list[int] = []
        for old, olds in groups.items():
            if old.expires_at is not None and old.expires_at <= now:  # lapsed: a new block
                held[blocks.created_at] += olds
                continue
            if not (self.update_in_place and old.expires_at is not None and expires is not None):
                touch += olds  # add, delete, add again: see `_created`
            held.setdefault(old.created_at, []).extend(olds)
        if groups:
            taken = set().union(*groups.values())
            held[blocks.created_at] += (k for k in keys if k not in taken)
        else:
            held[blocks.created_at] = keys
        for created, group in held.items():
            if group:
                self._adopt(group, Batch(expires, reason, source, created))
        cmds: list[Any] = []
        if touch:
            texts = [unpack(k) for k in touch]
            cmds = [b.add(b.element("block_v4", texts)), {"delete": b.element("block_v4", texts)}]
        elements = PackedElements.uniform(4, keys, blocks.remaining(now))
        return [*cmds, b.add(b.element("block_v4", cast("list[Any]", elements)))], groups

    def put(
        self, blocks: Iterable[Block], now: float, keys: Sequence[Key | None] | None = None
    ) -> list[Any]:
        """Record blocks; return the kernel commands (one transaction, one command per set
        and step — a batch of 100,000 elements is a handful of commands) that make them so.
        `keys`: the blocks' table keys when the caller has them (`checked_keys`). Single
        addresses are taken out of the table as they come, then held again in a pass of
        their own (`_adopt`: RUN_MIN IPv4 addresses of one batch or more as a compact run)
        and go out packed (`PackedElements`)."""
        touch: dict[str, list[Any]] = {}  # re-blocks: add (no-op if present), then delete...
        adds: dict[str, Any] = {}  # ...then everything added with its timeout
        packed = {"block_v4": PackedElements(4), "block_v6": PackedElements(6)}
        batches: dict[tuple[float | None, str, str, float], Batch] = {}
        fresh: dict[Batch, list[int]] = {}  # single addresses to hold, per batch
        pending: dict[int, Batch] = {}  # the same, by address: a key twice is seen
        repeated = False
        timeouts: dict[float | None, int | None] = {}  # one int per distinct expiry
        blocks = list(blocks)
        if keys is None:
            keys = [self._key(blk.key) for blk in blocks]
        if len(keys) != len(blocks) or None in keys:  # before the table changes at all
            bad = next((blk.key for blk, k in zip(blocks, keys, strict=False) if k is None), "")
            raise ValueError(f"{bad!r} is not a canonical block key" if bad else "a key per block")
        # the single addresses held already leave the table first, all at once
        taken = self._singles.take_many(k for k in keys if isinstance(k, int))
        self._forget_many(taken)
        taken_pop = taken.pop
        for new, key in zip(blocks, cast("Sequence[Key]", keys), strict=True):
            expires = new.expires_at
            if expires not in timeouts:
                timeouts[expires] = new.remaining(now)
            if isinstance(key, int):
                old = pending.pop(key, None)
                repeated = repeated or old is not None  # twice in one request: last wins
                old = old or taken_pop(key, None)
                live = (
                    old if old is None or old.expires_at is None or old.expires_at > now else None
                )
                created = self._created(key, new, live, touch)
            else:
                created = self._created(key, new, self._live(key, now), touch)
            ident = (expires, new.reason, new.source, created)
            batch = batches.get(ident)
            if batch is None:
                batch = batches[ident] = Batch(*ident)
            if isinstance(key, int):
                packed[set_of(key)].append(key ^ V6 if key >= V6 else key, timeouts[expires])
                pending[key] = batch
                fresh.setdefault(batch, []).append(key)
            else:
                adds.setdefault(set_of(key), []).append(b.timed(new.value(), timeouts[expires]))
                self._store(key, batch)
        if repeated:  # the lists hold the first batch of a repeated key too: regroup
            fresh = grouped(pending)
        del pending
        for batch, held in fresh.items():
            self._adopt(held, batch)
        adds.update((name, elements) for name, elements in packed.items() if elements)
        cmds: list[Any] = [b.add(b.element(name, v)) for name, v in sorted(touch.items())]
        cmds += [{"delete": b.element(name, v)} for name, v in sorted(touch.items())]
        cmds += [b.add(b.element(name, v)) for name, v in sorted(adds.items())]
        return cmds

    def _created(
        self, key: Key, new: Block, existing: Batch | None, touch: dict[str, list[Any]]
    ) -> float:
        """`new` replaces `existing` (the live batch `key` holds, or None): the creation time
        it keeps, and the element on the touch list when the kernel needs the
        add-delete-add to take the new timeout."""
        if existing is None:
            return new.created_at
        timed = existing.expires_at is not None and new.expires_at is not None
        if not (self.update_in_place and timed):
            # the element may expire in the kernel at any moment: add, delete, add
            # again with the new timeout is valid whatever the kernel holds now
            touch.setdefault(set_of(key), []).append(new.value())
        return existing.created_at

    def _adopt(self, keys: list[int], batch: Batch) -> None:
        """Hold single addresses the table does not hold under `batch`, all at once: in the
        dict, or (RUN_MIN IPv4 addresses or more) as a run of the compact part."""
        singles = self._singles
        v6 = [k for k in keys if k >= V6]
        loose = keys
        if len(keys) - len(v6) >= RUN_MIN:
            v4 = [k for k in keys if k < V6] if v6 else keys
            batch.run, dissolved, moved = singles.add_run(v4, batch)
            if dissolved is not None:  # its keys went into the dict: into its expiry list
                dissolved.batch.run = None
                if dissolved.batch.keys is not None:
                    dissolved.batch.keys.extend(moved)
            loose = v6
        singles.loose.update(dict.fromkeys(loose, batch))
        self._book(batch, len(keys) - len(v6), len(v6))
        if batch.keys is not None:
            if not batch.queued:  # the loop of `put` may have queued it (`_join`)
                heapq.heappush(self._heap, batch)
                batch.queued = True
            batch.keys.extend(loose)
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

    def checked_v4(self, keys: Sequence[int], texts: Sequence[str], now: float) -> None:
        """`checked_keys`' check of packed IPv4 addresses (a `BlockList`'s), all at once:
        each protected IPv4 range is one bisect into the sorted keys; on a hit the texts go
        through `checked_keys`, which names the first key at fault in request order."""
        ordered = sorted(keys)
        for lo, hi in zip(self._v4_starts, self._v4_ends, strict=True):
            i = bisect.bisect_left(ordered, lo)
            if i < len(ordered) and ordered[i] <= hi:
                self.checked_keys(texts, now)  # raises BlockError
                return

    def held(self, keys: Sequence[Key], texts: Sequence[str], now: float) -> dict[str, Batch]:
        """The live blocks among `keys` (with their texts) as their records by text: what a
        change replaces (`Batch.block(text)` is the block; made only when it is needed)."""
        get, out = self._singles.lookup(keys), {}
        for key, text in zip(keys, texts, strict=True):
            batch = get(key) if isinstance(key, int) else self._prefixes.get(key)
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
