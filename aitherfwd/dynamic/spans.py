"""Disjoint address ranges, indexed (layer L1, pure).

Owns: `DisjointSpans` — the prefix blocks of a block table as integer ranges per address
family, sorted, so "which prefix holds this address" and "which prefix overlaps this one"
are a binary search, not a walk building `ipaddress` objects. The kernel's interval sets
refuse overlapping elements, so the ranges of one family never overlap: the only range
that can hold or overlap a point or range is the last one starting at or before its end.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator


class DisjointSpans:
    def __init__(self) -> None:
        self._lo: dict[int, list[int]] = {4: [], 6: []}
        self._hi: dict[int, list[int]] = {4: [], 6: []}
        self._key: dict[int, list[str]] = {4: [], 6: []}

    def __len__(self) -> int:
        return len(self._key[4]) + len(self._key[6])

    def add(self, version: int, lo: int, hi: int, key: str) -> None:
        """Insert a range (replacing one with the same start)."""
        los = self._lo[version]
        i = bisect_left(los, lo)
        if i < len(los) and los[i] == lo:
            self._hi[version][i], self._key[version][i] = hi, key
            return
        los.insert(i, lo)
        self._hi[version].insert(i, hi)
        self._key[version].insert(i, key)

    def discard(self, version: int, lo: int, key: str) -> None:
        los = self._lo[version]
        i = bisect_left(los, lo)
        if i < len(los) and los[i] == lo and self._key[version][i] == key:
            del los[i], self._hi[version][i], self._key[version][i]

    def overlapping(self, version: int, lo: int, hi: int) -> Iterator[str]:
        """The keys of the ranges that share an address with [lo, hi], nearest first (they
        sit side by side: disjoint ranges sorted by start are sorted by end too). A point
        (lo == hi) lies in one range at most. The caller may skip expired ones."""
        los, his, keys = self._lo[version], self._hi[version], self._key[version]
        i = bisect_right(los, hi) - 1
        while i >= 0 and his[i] >= lo:
            yield keys[i]
            i -= 1
