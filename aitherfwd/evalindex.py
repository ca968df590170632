"""The evaluator's index (layer L1, pure): rule sets as bit masks over policy order, over
each IP version's address space and each port protocol's port space.

Owns: `Steps` (a step function of masks), `AddressIndex` (zone and candidate rules per
piece of the address space) and their builders. Each IP version's address space is cut
where a zone or a rule's source CIDRs begin or end, each piece holding its zone and the set
of rules that can match a source there; each port protocol's port space is cut the same way
by the rules' port ranges (bit i = rules[i]), so a lookup is a bisect and an AND.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aitherfwd import zones as zoning
from aitherfwd.policy.model import Policy, Protocol, Rule


@dataclass(frozen=True, slots=True)
class Steps:
    """A step function over integers >= starts[0]: the mask of the last start <= key."""

    starts: tuple[int, ...]
    masks: tuple[int, ...]

    def at(self, key: int) -> int:
        return self.masks[bisect_right(self.starts, key) - 1]


@dataclass(frozen=True, slots=True)
class AddressIndex:
    """One IP version's address space in pieces, each with its zone and the rules that can
    match a source there (zone and source CIDRs both satisfied)."""

    starts: tuple[int, ...]
    zones: tuple[str | None, ...]
    masks: tuple[int, ...]

    def at(self, address: int) -> tuple[str | None, int]:
        i = bisect_right(self.starts, address) - 1
        return self.zones[i], self.masks[i]


def bits(indexes: Iterable[int]) -> int:
    mask = 0
    for i in indexes:
        mask |= 1 << i
    return mask


def portless(rule: Rule, protocol: Protocol) -> bool:
    """A rule without ports that matches every packet of `protocol`."""
    return not rule.ports and rule.protocol in (Protocol.ANY, protocol)


def _merged(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-touching closed intervals covering the same integers."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _steps(intervals: Iterable[tuple[int, int, int]], base: int) -> Steps:
    """`base` plus the bits of the (lo, hi, bit) intervals covering each key >= 0.

    A sweep that toggles a bit on at `lo` and off after `hi`: correct because each bit's
    intervals are disjoint and non-touching (built with `_merged`)."""
    toggles: dict[int, int] = {0: 0}
    for lo, hi, bit in intervals:
        toggles[lo] = toggles.get(lo, 0) ^ bit
        toggles[hi + 1] = toggles.get(hi + 1, 0) ^ bit
    starts: list[int] = []
    masks: list[int] = []
    current = 0
    for start in sorted(toggles):
        current ^= toggles[start]
        if not masks or masks[-1] != base | current:
            starts.append(start)
            masks.append(base | current)
    return Steps(tuple(starts), tuple(masks))


def port_index(rules: Sequence[Rule], protocol: Protocol) -> Steps:
    """Destination port -> the rules whose protocol and ports match it."""
    intervals = [
        (lo, hi, 1 << i)
        for i, rule in enumerate(rules)
        for lo, hi in _merged(
            (pr.lo, pr.hi) for pm in rule.ports if pm.protocol is protocol for pr in pm.ranges
        )
    ]
    return _steps(intervals, bits(i for i, r in enumerate(rules) if portless(r, protocol)))


def source_steps(rules: Sequence[Rule], version: int) -> Steps:
    """Source address -> the rules whose source_cidrs (if any) contain it."""
    intervals = [
        (lo, hi, 1 << i)
        for i, rule in enumerate(rules)
        for lo, hi in _merged(
            (int(net.network_address), int(net.broadcast_address))
            for net in rule.source_cidrs
            if net.version == version
        )
    ]
    return _steps(intervals, bits(i for i, r in enumerate(rules) if not r.source_cidrs))


def _zone_steps(policy: Policy, version: int) -> tuple[list[int], list[str | None]]:
    """Zone partition as starts and labels; None between and around the zones' blocks."""
    starts: list[int] = [0]
    names: list[str | None] = [None]
    for first, last, zone in zoning.partition(policy.zones, version):
        if starts[-1] == int(first):
            names[-1] = zone
        else:
            starts.append(int(first))
            names.append(zone)
        starts.append(int(last) + 1)
        names.append(None)
    return starts, names


def address_index(policy: Policy, version: int) -> AddressIndex:
    rules = policy.rules
    by_zone: dict[str | None, int] = {
        name: bits(i for i, r in enumerate(rules) if r.zones is None or name in r.zones)
        for name in [None, *(z.name for z in policy.zones)]
    }
    zone_starts, zone_names = _zone_steps(policy, version)
    sources = source_steps(rules, version)
    starts: list[int] = []
    zones: list[str | None] = []
    masks: list[int] = []
    for start in sorted({*zone_starts, *sources.starts}):
        zone = zone_names[bisect_right(zone_starts, start) - 1]
        mask = by_zone[zone] & sources.at(start)
        if not starts or (zones[-1], masks[-1]) != (zone, mask):
            starts.append(start)
            zones.append(zone)
            masks.append(mask)
    return AddressIndex(tuple(starts), tuple(zones), tuple(masks))
