"""Country and list ranges as set elements for a kernel transaction (layer L1, pure).

Owns: `RangeElements`, a sequence of `{"range": [first, last]}` elements (what libnftables
JSON and our netlink encoder both read) made one at a time as the encoder walks them:
300,000 element dicts at once would cost ~130 MB of peak memory, which the daemon would
keep. Addresses are rendered with inet_ntop, not ipaddress.
"""

from __future__ import annotations

import socket
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from aitherfwd.geo.ranges import Range

Json = dict[str, Any]
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_WIDTH = {4: 4, 6: 16}


class RangeElements(Sequence[Json]):
    """One set's ranges, flat (an array for IPv4); elements made on demand."""

    def __init__(self, family: int, pairs: Iterable[Range]) -> None:
        self.family = family
        flat = [x for pair in pairs for x in pair]
        self.flat: Sequence[int] = array("Q", flat) if family == 4 else tuple(flat)

    def __len__(self) -> int:
        return len(self.flat) // 2

    @overload
    def __getitem__(self, index: int) -> Json: ...

    @overload
    def __getitem__(self, index: slice) -> list[Json]: ...

    def __getitem__(self, index: int | slice) -> Json | list[Json]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self._one(self.flat[2 * index], self.flat[2 * index + 1])

    def __iter__(self) -> Iterator[Json]:
        it = iter(self.flat)
        for first, last in zip(it, it, strict=True):
            yield self._one(first, last)

    def _one(self, first: int, last: int) -> Json:
        af, width = _AF[self.family], _WIDTH[self.family]
        ntop = socket.inet_ntop
        return {
            "range": [ntop(af, first.to_bytes(width, "big")), ntop(af, last.to_bytes(width, "big"))]
        }

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Json]:
        return list(self)  # the fake kernel keeps a copy of every batch
