"""One block and its parts (layer L1, pure): the records `BlockTable` is made of.

Owns: `Block` (the view of one block callers see), the key forms (canonical text; a single
address packed into an int, IPv6 told apart by bit 128), `Batch` (the expiry, reason,
source and creation time shared by every block of one request), the protected-range and
overlap checks of a key, and the choice of kernel set per key. Imports nothing but the
nft builders and the policy model; nothing here talks to the kernel or the disk.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from aitherfwd.dynamic.packedelements import PackedElements
from aitherfwd.errors import AitherError
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import IPNetwork

if TYPE_CHECKING:
    from aitherfwd.dynamic.singles import Run

BLOCK_SET_NAMES = ("block_v4", "block_v6", "block_v4_net", "block_v6_net")
# (family, kind) keys of the metrics' block counts, indexed by "is IPv6" (no tuple per block)
MANUAL = (("ipv4", "manual"), ("ipv6", "manual"))
PERMANENT = (("ipv4", "permanent"), ("ipv6", "permanent"))
TEMPORARY = (("ipv4", "temporary"), ("ipv6", "temporary"))
KINDS = (*MANUAL, *PERMANENT, *TEMPORARY)
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


class BlockError(AitherError):
    """A block that must not be made: a protected address (`E-PROTECTED`) or a prefix
    overlapping another (`E-BLOCK-OVERLAP`)."""

    code = "E-PROTECTED"


class Block(NamedTuple):
    """One block, kept small: 100,000 of them must fit a daemon of ~60 MB, so the address
    is its canonical text only (an `ipaddress` network object costs ~430 bytes more);
    the network object is made on demand. A named tuple: a bulk request makes 100,000 of
    them, at 0.2 µs each instead of a frozen dataclass's 0.5."""

    key: str  # canonical: `203.0.113.7` for an address, `2001:db8::/64` for a prefix
    expires_at: float | None  # None: permanent
    reason: str
    source: str  # manual | reputation | detection | kernel
    created_at: float

    @classmethod
    def of(
        cls,
        network: IPNetwork,
        expires_at: float | None,
        reason: str,
        source: str,
        created_at: float,
    ) -> Block:
        return cls(address_text(network), expires_at, reason, source, created_at)

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.key)

    @property
    def set_name(self) -> str:
        return set_for_key(self.key)

    @property
    def single(self) -> bool:
        return "/" not in self.key

    @property
    def kind(self) -> tuple[str, str]:
        """(family, kind) for metrics: kind is manual (an operator's), else permanent or
        temporary by its expiry."""
        v6 = ":" in self.key
        if self.source == "manual":
            return MANUAL[v6]
        return PERMANENT[v6] if self.expires_at is None else TEMPORARY[v6]

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (at least 1), or None when permanent."""
        if self.expires_at is None:
            return None
        return max(1, math.ceil(self.expires_at - now))

    def value(self) -> Any:
        """The set element's key: the address text, or a prefix object."""
        if self.single:
            return self.key
        addr, length = self.key.split("/")
        return b.prefix(addr, int(length))

    def element(self, now: float) -> Any:
        return b.timed(self.value(), self.remaining(now))


def address_text(net: IPNetwork) -> str:
    """`203.0.113.7` for a single address, `2001:db8::/64` for a prefix."""
    single = net.prefixlen == net.max_prefixlen
    return str(net.network_address) if single else str(net)


def set_for_key(key: str) -> str:
    if ":" in key:
        return "block_v6_net" if "/" in key else "block_v6"
    return "block_v4_net" if "/" in key else "block_v4"


def canonical_v4(text: str) -> str | None:
    """`text` when it is an IPv4 address in canonical dotted-quad form, else None. The fast
    path for bulk requests: inet_pton is a pure conversion (no I/O), ~20x faster than
    `ipaddress`, and takes only canonical dotted quads (four decimal parts, no leading
    zeros: glibc and musl; tests/unit/test_block_table_compact.py holds it to that)."""
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    return text


def span(key: str) -> tuple[int, int, int]:
    """(version, first, last) address of a key, as integers."""
    if "/" not in key and ":" not in key:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET, key), "big")
        return 4, n, n
    net = ipaddress.ip_network(key)
    return net.version, int(net.network_address), int(net.broadcast_address)


def check_batch(keys: Iterable[str]) -> None:
    """Raise BlockError (E-BLOCK-OVERLAP, naming the pair) when two prefixes of one request
    overlap: in one interval set the kernel would refuse the whole batch. O(p log p)."""
    spans = sorted((*span(k), k) for k in keys if "/" in k)
    reach: tuple[int, int, str] | None = None  # (version, last, key) reaching furthest
    for version, lo, hi, key in spans:
        if reach is not None and reach[0] == version and lo <= reach[1]:
            raise BlockError(
                f"{key} overlaps {reach[2]} in the same request; block disjoint prefixes",
                code="E-BLOCK-OVERLAP",
            )
        if reach is None or reach[0] != version or hi > reach[1]:
            reach = (version, hi, key)


def delete_command(set_name: str, value: Any) -> Any:
    return {"delete": b.element(set_name, [value])}


# --- compact records -----------------------------------------------------------------------

# a row of the store's `blocks` table: key, expires_at, reason, source, created_at
BlockRow = tuple[str, float | None, str, str, float]
Key = int | str  # in the table: a packed single address, or a prefix's canonical text
V6 = 1 << 128  # set on a packed IPv6 address: 10.0.0.1 and ::a00:1 stay two keys
SOURCES = {s: s for s in ("manual", "reputation", "detection", "kernel")}  # one object each


def pack(key: str) -> int | None:
    """The int of a single-address key in canonical text (IPv6 | V6), or None for a prefix
    or for text that is not canonical (no other text may find the key's block)."""
    try:
        if ":" not in key:  # inet_pton takes only canonical dotted quads (no leading
            # zeros, four parts: glibc and musl; tests/unit/test_block_table_compact.py)
            return int.from_bytes(socket.inet_pton(socket.AF_INET, key), "big")
        if "/" in key:
            return None
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, key), "big")
    except (OSError, ValueError):  # not an address (a prefix, garbage, an embedded NUL)
        return None
    return n | V6 if str(ipaddress.IPv6Address(n)) == key else None


def unpack(n: int) -> str:
    """The canonical text of a packed address (the inverse of `pack`)."""
    if n >= V6:
        return str(ipaddress.IPv6Address(n ^ V6))
    return socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))


class Batch:
    """What the blocks of one request (or one load) share: their expiry, reason, source and
    creation time, held once. For the expiry index, a batch that expires also lists its keys
    (8 bytes each; a key that left it since is skipped by identity); `live` counts the keys
    still holding it. Ordered by expiry, so the heap holds batches themselves."""

    __slots__ = ("created_at", "expires_at", "keys", "live", "queued", "reason", "run", "source")

    def __init__(
        self, expires_at: float | None, reason: str, source: str, created_at: float
    ) -> None:
        self.expires_at = expires_at
        self.reason = reason
        self.source = SOURCES.get(source, source)
        self.created_at = created_at
        self.keys: list[int | str] | None = None if expires_at is None else []
        self.live = 0
        self.queued = False  # in the table's expiry heap
        self.run: Run | None = None  # its keys kept compact (`singles.Run`), not in `keys`

    def __lt__(self, other: Batch) -> bool:
        return (self.expires_at or math.inf) < (other.expires_at or math.inf)

    def block(self, key: str) -> Block:
        return Block(key, self.expires_at, self.reason, self.source, self.created_at)

    def kind(self, v6: bool) -> tuple[str, str]:
        if self.source == "manual":
            return MANUAL[v6]
        return PERMANENT[v6] if self.expires_at is None else TEMPORARY[v6]


class BlockList(Sequence[Block]):
    """The blocks of one request that share expiry, reason, source and creation time,
    held as their key texts: a bulk request's 100,000 blocks are a list of strings, and a
    `Block` is made only for the few that are looked at (the answer's first 1,000, the
    audit record's first 100)."""

    __slots__ = ("created_at", "expires_at", "reason", "source", "texts")

    def __init__(
        self, texts: list[str], expires_at: float | None, reason: str, source: str, now: float
    ) -> None:
        self.texts, self.expires_at, self.reason = texts, expires_at, reason
        self.source, self.created_at = SOURCES.get(source, source), now

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> Block: ...

    @overload
    def __getitem__(self, index: slice) -> list[Block]: ...

    def __getitem__(self, index: int | slice) -> Block | list[Block]:
        if isinstance(index, slice):
            return [self._block(t) for t in self.texts[index]]
        return self._block(self.texts[index])

    def __iter__(self) -> Iterator[Block]:
        return map(self._block, self.texts)

    def _block(self, text: str) -> Block:
        return Block(text, self.expires_at, self.reason, self.source, self.created_at)

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (at least 1), or None when permanent: `Block.remaining`."""
        return None if self.expires_at is None else max(1, math.ceil(self.expires_at - now))


def grouped(held: dict[int, Batch]) -> dict[Batch, list[int]]:
    """Single addresses by the batch they hold."""
    out: dict[Batch, list[int]] = {}
    for key, batch in held.items():
        out.setdefault(batch, []).append(key)
    return out


def set_of(key: Key) -> str:
    if isinstance(key, int):
        return "block_v6" if key >= V6 else "block_v4"
    return set_for_key(key)


def text_of(key: Key) -> str:
    return unpack(key) if isinstance(key, int) else key


def add_commands(sets: dict[str, list[Any]]) -> list[Any]:
    """The add commands of the filled per-set lists, which start over empty."""
    out = [b.add(b.element(name, elems)) for name, elems in sorted(sets.items()) if elems]
    for name in sets:
        sets[name] = []
    return out


def _remaining(batch: Batch, now: float) -> int | None:
    return None if batch.expires_at is None else max(1, math.ceil(batch.expires_at - now))


def restore_batches(
    singles: Iterable[tuple[int, Batch]], prefixes: dict[str, Batch], now: float, limit: float
) -> Iterator[list[Any]]:
    """Element adds for these blocks with their remaining timeouts, at most `limit`
    elements per yielded batch, each made when the one before has been consumed. One
    timeout int per batch record; single addresses stay packed ints (PackedElements: no
    text, no dict per block; 1,000,000 per cold start)."""
    sets: dict[str, Any] = {name: [] for name in BLOCK_SET_NAMES}
    v4 = sets["block_v4"] = PackedElements(4)
    v6 = sets["block_v6"] = PackedElements(6)
    held, last, timeout = 0, None, None
    for key, batch in singles:  # (key, batch) pairs
        if batch is not last:
            last, timeout = batch, _remaining(batch, now)
        if key < V6:
            v4.append(key, timeout)
        else:
            v6.append(key ^ V6, timeout)
        held += 1
        if held >= limit:
            yield add_commands(sets)
            v4 = sets["block_v4"] = PackedElements(4)
            v6 = sets["block_v6"] = PackedElements(6)
            held = 0
    for text, batch in prefixes.items():
        addr, length = text.split("/")
        sets[set_for_key(text)].append(b.timed(b.prefix(addr, int(length)), _remaining(batch, now)))
        held += 1
        if held >= limit:
            yield add_commands(sets)
            held = 0
    if held:
        yield add_commands(sets)


class RestoreParts:
    """The element adds of blocks as a load makes them (`BlockTable.load_rows`, a cold
    start's chunk of rows): single addresses packed per family with their remaining
    timeouts at `now`, prefixes with their batch."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.v4 = PackedElements(4)
        self.v6 = PackedElements(6)
        self.prefixes: dict[str, Batch] = {}

    def add(self, key: Key, batch: Batch) -> None:
        """A block loaded by the slow path (a prefix, or a key loaded twice)."""
        if isinstance(key, str):
            self.prefixes[key] = batch
        elif key < V6:
            self.v4.append(key, _remaining(batch, self.now))
        else:
            self.v6.append(key ^ V6, _remaining(batch, self.now))

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6) + len(self.prefixes)

    def commands(self) -> list[Any]:
        """The add commands, one per set that gets elements."""
        sets: dict[str, Any] = {name: [] for name in BLOCK_SET_NAMES}
        sets["block_v4"], sets["block_v6"] = self.v4, self.v6
        for text, batch in self.prefixes.items():
            addr, length = text.split("/")
            sets[set_for_key(text)].append(
                b.timed(b.prefix(addr, int(length)), _remaining(batch, self.now))
            )
        return add_commands(sets)
