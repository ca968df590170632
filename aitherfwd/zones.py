"""Zone classification shared by the compiler and the evaluator (layer L1, pure).

Owns: turning ordered, possibly overlapping zone CIDRs into disjoint address blocks, each
labelled with the FIRST zone that contains it, and classifying one address the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aitherfwd.policy.model import IPAddress, IPNetwork, Zone

Block = tuple[IPAddress, IPAddress, str]  # first address, last address, zone


def partition(zones: Sequence[Zone], version: int) -> list[Block]:
    """Disjoint address ranges of one IP version, sorted, labelled with their zone.

    Adjacent ranges of the same zone are merged, so `external` minus the private ranges is
    a handful of ranges rather than dozens of prefixes."""
    covered: list[tuple[int, int]] = []  # disjoint, sorted [lo, hi]
    pieces: list[tuple[int, int, str]] = []
    for zone in zones:
        for net in zone.cidrs:
            if net.version != version:
                continue
            lo, hi = int(net.network_address), int(net.broadcast_address)
            for a, b in _subtract(lo, hi, covered):
                pieces.append((a, b, zone.name))
            covered = _insert(covered, lo, hi)
    merged: list[tuple[int, int, str]] = []
    for a, b, name in sorted(pieces):
        if merged and merged[-1][2] == name and merged[-1][1] + 1 == a:
            merged[-1] = (merged[-1][0], b, name)
        else:
            merged.append((a, b, name))
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [(addr(a), addr(b), name) for a, b, name in merged]


def as_prefix(first: IPAddress, last: IPAddress) -> IPNetwork | None:
    """The single prefix spanning exactly first..last, or None (O(1): an aligned power of 2)."""
    lo, size = int(first), int(last) - int(first) + 1
    if size & (size - 1) or lo % size:
        return None
    bits = first.max_prefixlen - (size.bit_length() - 1)
    return ipaddress.ip_network(f"{first}/{bits}")


def classify(zones: Sequence[Zone], address: IPAddress) -> str | None:
    for zone in zones:
        for net in zone.cidrs:
            if net.version == address.version and address in net:
                return zone.name
    return None


def _subtract(lo: int, hi: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    cur = lo
    for a, b in covered:
        if b < cur:
            continue
        if a > hi:
            break
        if a > cur:
            out.append((cur, a - 1))
        cur = max(cur, b + 1)
        if cur > hi:
            break
    if cur <= hi:
        out.append((cur, hi))
    return out


def _insert(covered: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*covered, (lo, hi)]):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
