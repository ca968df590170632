"""The block table's single addresses, compact for bulk requests (layer L1, pure).

Owns: `Singles`, the map from a packed single address (an int; IPv6 with bit 128 set) to
the `Batch` it holds, and `Run`, its compact part. A change of a few keys goes into a dict
(`loose`). A bulk request's IPv4 addresses that share one batch — RUN_MIN of them or more —
are kept as a `Run` instead: the addresses in one sorted array of 4-byte ints, found by
bisection, and one byte each saying whether the address still holds the run's batch.

Why: in the dict an address costs ≈ 85 bytes (its slot, its int object, its place in the
batch's expiry list), and the int objects are made while the request's parsed JSON is still
alive, so they pin its freed pages: a 100,000-address request left the daemon 16 MB larger
in the dict, 3 MB as a run (measured in-process, RSS after the request's garbage is gone;
docs/benchmarks-daemon.md). A run costs 5 bytes per address.

The price is the lookup: an address not in the dict is bisected in every run (≤ MAX_RUNS;
beyond that, the smallest run's live addresses move into the dict). A run loses addresses
one by one (an unblock, a re-block to another batch) by clearing their byte; a run with no
live address left is dropped. The table's expiry index reaches a run through its batch
(`Batch.run`), so a run that expires leaves in one step.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from aitherfwd.dynamic.blockrecords import Batch

RUN_MIN = 1024  # IPv4 addresses of one batch in one change: kept as a run, not in the dict
MAX_RUNS = 16  # runs bisected per lookup at most: beyond, the smallest goes into the dict
V4_END = 1 << 32  # packed keys below are IPv4 addresses
# keys against a run: below 1/SCAN_RATIO of its size they are bisected one by one, above it
# the run is walked once (a bisection costs ≈ 0.5 µs, a walk ≈ 30 ns per address)
SCAN_RATIO = 16


class Run:
    """IPv4 addresses that share one batch: sorted 4-byte ints and a live byte each."""

    __slots__ = ("alive", "batch", "keys", "live")

    def __init__(self, keys: array[int], batch: Batch) -> None:
        self.keys = keys
        self.alive = bytearray(b"\x01") * len(keys)
        self.live = len(keys)
        self.batch = batch

    def find(self, key: int) -> int:
        """The index of `key` if this run still holds it, else -1."""
        keys = self.keys
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key and self.alive[i]:
            return i
        return -1

    def held(self) -> Iterator[int]:
        """The addresses this run still holds, in order."""
        return itertools.compress(self.keys, self.alive)


class Singles:
    """Packed single address -> its `Batch`: a dict (`loose`) and up to MAX_RUNS runs.
    A key is in one place at most. Expired keys stay until the table prunes them."""

    __slots__ = ("loose", "runs")

    def __init__(self) -> None:
        self.loose: dict[int, Batch] = {}
        self.runs: list[Run] = []

    def get(self, key: int) -> Batch | None:
        batch = self.loose.get(key)
        if batch is None and self.runs and key < V4_END:
            for run in self.runs:
                if run.find(key) >= 0:
                    return run.batch
        return batch

    def getter(self) -> Callable[[int], Batch | None]:
        """`get`, as the dict's own method while there is no run (a bulk loop's speed)."""
        return self.get if self.runs else self.loose.get

    def lookup(self, keys: Collection[object]) -> Callable[[int], Batch | None]:
        """A `get` for a pass over `keys` (RUN_MIN or more, with runs: a run no more than
        SCAN_RATIO times larger is matched against them all at once, in C, instead of one
        bisection per key)."""
        if not self.runs or len(keys) < RUN_MIN:
            return self.getter()
        query = keys if isinstance(keys, (set, frozenset)) else set(keys)
        found: dict[int, Batch] = {}
        for run in self.runs:
            found.update(dict.fromkeys(_hits(run, query), run.batch))
        loose_get, found_get = self.loose.get, found.get

        def get(key: int) -> Batch | None:
            batch = loose_get(key)
            return found_get(key) if batch is None else batch

        return get

    def take_many(self, keys: Iterable[int]) -> dict[int, Batch]:
        """Remove all of `keys` (a key named twice: once); returns what each held."""
        out: dict[int, Batch] = {}
        for batch, held in self.take_grouped(keys).items():
            out.update(dict.fromkeys(held, batch))
        return out

    def take_grouped(self, keys: Iterable[int]) -> dict[Batch, list[int]]:
        """`take_many`'s keys by the batch they held: a run's hits are one group as they
        come (a re-block of 100,000 is not regrouped key by key). A run is matched against
        many keys all at once, in C; a few keys are bisected (a single ban must not walk a
        run of 100,000)."""
        query = set(keys)
        out: dict[Batch, list[int]] = {}
        for run in list(self.runs):
            hits = _take_from(run, query)
            if not hits:
                continue
            out.setdefault(run.batch, []).extend(hits)
            run.live -= len(hits)
            if run.live == 0:
                self.drop_run(run)
        pop = self.loose.pop
        for key in self.loose.keys() & query:  # the smaller side is walked
            out.setdefault(pop(key), []).append(key)
        return out

    def __contains__(self, key: int) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: int) -> Batch:
        batch = self.get(key)
        if batch is None:
            raise KeyError(key)
        return batch

    def __setitem__(self, key: int, batch: Batch) -> None:
        if self.runs and key < V4_END:
            self._unrun(key)
        self.loose[key] = batch

    def take(self, key: int) -> Batch | None:
        """Remove `key` and return the batch it held (None: not held)."""
        batch = self.loose.pop(key, None)
        if batch is None and self.runs and key < V4_END:
            return self._unrun(key)
        return batch

    def pop(self, key: int) -> Batch:
        batch = self.take(key)
        if batch is None:
            raise KeyError(key)
        return batch

    def _unrun(self, key: int) -> Batch | None:
        for run in self.runs:
            i = run.find(key)
            if i >= 0:
                run.alive[i] = 0
                run.live -= 1
                batch = run.batch
                if run.live == 0:
                    self.drop_run(run)
                return batch
        return None

    def __len__(self) -> int:
        return len(self.loose) + sum(run.live for run in self.runs)

    def __iter__(self) -> Iterator[int]:
        yield from self.loose
        for run in self.runs:
            yield from run.held()

    def items(self) -> Iterator[tuple[int, Batch]]:
        yield from self.loose.items()
        for run in self.runs:
            yield from zip(run.held(), itertools.repeat(run.batch))

    def add_run(self, keys: list[int], batch: Batch) -> tuple[Run, Run | None, list[int]]:
        """Hold `keys` (IPv4, distinct, held nowhere here) under `batch` as a run. Returns
        the run, and the run dissolved to keep MAX_RUNS with its live keys, now in the dict
        (None and []: none was)."""
        run = Run(array("I", sorted(keys)), batch)
        self.runs.append(run)
        if len(self.runs) <= MAX_RUNS:
            return run, None, []
        smallest = min(self.runs, key=lambda r: r.live)
        moved = list(smallest.held())
        self.loose.update(dict.fromkeys(moved, smallest.batch))
        self.drop_run(smallest)
        return run, smallest, moved

    def drop_run(self, run: Run) -> None:
        """Forget every key of `run` (its batch expired, or it went into the dict)."""
        if run in self.runs:
            self.runs.remove(run)
        run.live = 0
        run.keys = array("I")
        run.alive = bytearray()


def _hits(run: Run, query: Collection[object]) -> set[int]:
    """The keys of `query` that `run` holds. Few keys against a large run: one bisection
    each; otherwise one pass over the run (C's set intersection)."""
    if len(query) * SCAN_RATIO < len(run.keys):
        return {k for k in query if type(k) is int and k < V4_END and run.find(k) >= 0}
    found = query if isinstance(query, (set, frozenset)) else set(query)
    return cast("set[int]", found.intersection(run.held()))


def _take_from(run: Run, query: set[int]) -> set[int]:
    """Clear the live bytes of `query`'s keys in `run`; the keys it held (`_hits`)."""
    hits = _hits(run, query)
    if len(hits) * SCAN_RATIO < len(run.keys):
        for key in hits:
            run.alive[run.find(key)] = 0
    elif hits:
        gone = map(operator.not_, map(hits.__contains__, run.keys))
        run.alive = bytearray(map(operator.and_, run.alive, gone))
    return hits
