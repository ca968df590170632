"""Single-address set elements kept packed (layer L1, pure).

Owns: `PackedElements`, a sequence of one family's addresses with their kernel timeouts,
held as two flat arrays (an int per address, seconds per timeout) rather than a JSON dict
per element. The netlink element writer (adapters/nftelements.py) encodes straight from
the ints; libnftables (the first batch of a cold start, which travels with the ruleset)
and the fake kernel get the JSON elements made on demand by iterating. A cold start of
1,000,000 blocks made a dict and an address text per block only for the writer to parse
the text back into bytes.
"""

from __future__ import annotations

import socket
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

Json = dict[str, Any]
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
WIDTH = {4: 4, 6: 16}


class PackedElements(Sequence[Any]):
    """`{"elem": {"val": "<address>", "timeout": s}}` (or the bare address when the
    timeout is 0: permanent) for each appended address, in order."""

    def __init__(self, family: int) -> None:
        self.family = family
        # IPv4 addresses fit an unsigned 64-bit array; IPv6 ones are Python ints
        self.addresses: array[int] | list[int] = array("Q") if family == 4 else []
        self.timeouts: array[int] = array("Q")

    @classmethod
    def uniform(cls, family: int, addresses: Sequence[int], timeout: int | None) -> PackedElements:
        """`addresses`, all with one timeout (a bulk request's): two arrays made at once."""
        out = cls(family)
        out.addresses = array("Q", addresses) if family == 4 else list(addresses)
        out.timeouts = array("Q", [timeout or 0]) * len(addresses)
        return out

    def append(self, address: int, timeout: int | None) -> None:
        self.addresses.append(address)
        self.timeouts.append(timeout or 0)

    def __len__(self) -> int:
        return len(self.timeouts)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self._one(self.addresses[index], self.timeouts[index])

    def __iter__(self) -> Iterator[Any]:
        for address, timeout in zip(self.addresses, self.timeouts, strict=True):
            yield self._one(address, timeout)

    def _one(self, address: int, timeout: int) -> Any:
        text = socket.inet_ntop(_AF[self.family], address.to_bytes(WIDTH[self.family], "big"))
        return {"elem": {"val": text, "timeout": timeout}} if timeout else text

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)  # the fake kernel keeps a copy of every batch
