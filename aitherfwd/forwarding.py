"""Which way routed traffic goes, as the forward chain decides it (layer L1, pure).

Owns: `ForwardPaths`, built once per policy from its container zones (`containers: true`):
a routed connection whose destination's first zone holds containers is *inbound to
containers* (TO), else one whose source's first zone does is *outbound from containers*
(FROM), else it is none of the policy's business (None: the forward chain's policy
accepts it). The evaluator judges each path like nft/forward.py compiles it. Must not
import the evaluator (it imports this), adapters or anything that does I/O.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from enum import StrEnum

from aitherfwd import zones as zoning
from aitherfwd.policy.model import IPAddress, Policy


class Path(StrEnum):
    TO = "to containers"
    FROM = "from containers"


class ForwardPaths:
    def __init__(self, policy: Policy) -> None:
        mine = {z.name for z in policy.zones if z.containers}
        self.enabled = bool(mine)
        self._ranges: dict[int, tuple[list[int], list[int]]] = {}
        for fam in (4, 6):
            pieces = [
                (int(a), int(b)) for a, b, z in zoning.partition(policy.zones, fam) if z in mine
            ]
            self._ranges[fam] = ([a for a, _ in pieces], [b for _, b in pieces])

    def holds_containers(self, address: IPAddress) -> bool:
        """True when `address`'s first zone holds containers (the kernel's containers_v4/v6)."""
        starts, ends = self._ranges[address.version]
        i = bisect_right(starts, int(address)) - 1
        return i >= 0 and int(address) <= ends[i]

    def sample(self, version: int) -> IPAddress | None:
        """An address of the first container zone of that IP version (for `explain`: every
        container address is judged alike), None when there is none."""
        starts, _ = self._ranges[version]
        if not starts:
            return None
        first = starts[0] + (1 if version == 4 else 0)  # skip the network address
        return ipaddress.IPv4Address(first) if version == 4 else ipaddress.IPv6Address(first)

    def path(self, source: IPAddress, dest: IPAddress) -> Path | None:
        if self.holds_containers(dest):
            return Path.TO
        if self.holds_containers(source):
            return Path.FROM
        return None
