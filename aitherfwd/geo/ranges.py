"""Prefix sets of countries and lists: merged address ranges, v4 and v6 (layer L1, pure).

Owns: turning networks (from a MaxMind DB walk, or the lines of a list file) into sorted,
merged ranges per country or list and family — adjacent and overlapping prefixes become
one range before anything reaches the kernel —, the list-file format (one prefix or
address per line; `;` and `#` start a comment, so Spamhaus DROP/EDROP and FireHOL files
parse; a bad line is counted with its line number and the rest still counts), the delta
between two contents of one set, and membership for evaluate/explain.

Ranges are kept compact: a family's ranges are one flat `array('Q')` (IPv4) or tuple of
ints (IPv6) of first/last pairs, so a 300,000-prefix database costs a few megabytes once
read, not a Python object per prefix. No I/O here.
"""

from __future__ import annotations

import ipaddress
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

Range = tuple[int, int]  # first and last address, inclusive
MAX_BAD_LINES_KEPT = 20  # line numbers reported per file (all are counted)


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, with overlapping and adjacent ranges joined."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


@dataclass(frozen=True, slots=True)
class Ranges:
    """One family's merged ranges, flat: first0, last0, first1, last1, ..."""

    family: int
    flat: Sequence[int]

    @classmethod
    def of(cls, family: int, ranges: Iterable[Range]) -> Ranges:
        merged = merge(ranges)
        flat = [x for pair in merged for x in pair]
        return cls(family, array("Q", flat) if family == 4 else tuple(flat))

    def __len__(self) -> int:
        return len(self.flat) // 2

    def pairs(self) -> Iterator[Range]:
        it = iter(self.flat)
        return zip(it, it, strict=True)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, int):
            return False
        i = bisect_right(self.flat, address)
        # inside a range when the first address at or below it is a range's first (even
        # index) — or it equals a range's last (odd index, exact)
        return i % 2 == 1 or (i > 0 and self.flat[i - 1] == address)


def empty(family: int) -> Ranges:
    return Ranges.of(family, [])


@dataclass(frozen=True, slots=True)
class PrefixSet:
    """A country's or a list's addresses, both families."""

    v4: Ranges = field(default_factory=lambda: empty(4))
    v6: Ranges = field(default_factory=lambda: empty(6))

    def family(self, version: int) -> Ranges:
        return self.v4 if version == 4 else self.v6

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return int(address) in self.family(address.version)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


def network_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Range:
    return int(net.network_address), int(net.broadcast_address)


class Collector:
    """Accumulates (key, family, range) and builds merged `PrefixSet`s per key. IPv4
    ranges wait packed in one 64-bit word each (first << 32 | last), so a 300,000-network
    database costs ~2.4 MB while it is read, not a tuple per network."""

    def __init__(self) -> None:
        self._v4: dict[str, array[int]] = {}
        self._v6: dict[str, list[Range]] = {}

    def add(self, key: str, family: int, first: int, last: int) -> None:
        if family == 4:
            packed = self._v4.get(key)
            if packed is None:
                packed = self._v4[key] = array("Q")
            packed.append(first << 32 | last)
        else:
            self._v6.setdefault(key, []).append((first, last))

    def build(self) -> dict[str, PrefixSet]:
        out = {}
        for k in sorted(self._v4.keys() | self._v6.keys()):
            packed = self._v4.pop(k, array("Q"))
            v4 = Ranges.of(4, ((p >> 32, p & 0xFFFFFFFF) for p in sorted(packed)))
            del packed
            out[k] = PrefixSet(v4, Ranges.of(6, self._v6.pop(k, [])))
        return out


# --- list files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedList:
    prefixes: PrefixSet
    lines: int  # lines with a prefix or address
    bad: int  # lines that are neither blank, comment nor a prefix
    bad_lines: tuple[tuple[int, str], ...]  # the first few: (line number, why)


def parse_list(text: str) -> ParsedList:
    """One prefix or address per line; `;` or `#` and what follows is a comment; host
    bits set (`10.0.0.1/8`) are a bad line, not silently widened."""
    collect = Collector()
    good = bad = 0
    kept: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        token = line.split()[0]
        try:
            net = ipaddress.ip_network(token, strict=True)
        except ValueError as exc:
            bad += 1
            if len(kept) < MAX_BAD_LINES_KEPT:
                kept.append((number, str(exc)[:120]))
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            mapped = net.network_address.ipv4_mapped
            net = ipaddress.IPv4Network(f"{mapped}/{max(net.prefixlen - 96, 0)}", strict=False)
        good += 1
        collect.add("list", net.version, *network_range(net))
    built = collect.build().get("list", PrefixSet())
    return ParsedList(built, good, bad, tuple(kept))


# --- deltas --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    removed: tuple[Range, ...]
    added: tuple[Range, ...]

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


STRIDE = 16  # values (8 ranges) compared at once while both sides agree


def delta(old: Ranges, new: Ranges) -> Delta:
    """What to delete and add so the kernel's ranges `old` become `new` (a changed range is
    deleted and re-added: the kernel's interval sets hold ranges, not addresses). One merge
    walk over both sorted sequences: no set of 300,000 tuples. Stretches where both agree
    (most of a refresh) are skipped a stride at a time by comparing slices (in C); a stride
    that differs is walked range by range: 1% of 300,000 ranges changed costs ≈ 25 ms
    instead of ≈ 130 ms for a walk of every range."""
    removed: list[Range] = []
    added: list[Range] = []
    a, z = old.flat, new.flat
    na, nz = len(a), len(z)
    i = j = 0
    while i < na and j < nz:
        if a[i : i + STRIDE] == z[j : j + STRIDE]:
            step = min(STRIDE, na - i, nz - j)
            i, j = i + step, j + step
            continue
        end = i + STRIDE
        while i < end and i < na and j < nz:
            left, right = (a[i], a[i + 1]), (z[j], z[j + 1])
            if left == right:
                i, j = i + 2, j + 2
            elif left < right:
                removed.append(left)
                i += 2
            else:
                added.append(right)
                j += 2
    removed += list(zip(a[i::2], a[i + 1 :: 2], strict=True))
    added += list(zip(z[j::2], z[j + 1 :: 2], strict=True))
    return Delta(tuple(removed), tuple(added))
