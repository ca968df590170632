"""A bulk block request in its usual shape, taken whole (layer L1, pure).

Owns: `bulk_v4` — `{"blocks": [...]}` whose items all carry the same fields, one TTL and
one reason, and canonical IPv4 addresses, read as columns (`BulkBlocks`) by a handful of C
passes over the items (`map`, `set`, `inet_pton`) instead of a `BlockSpec` per item: a
100,000-item request in ≈ 25 ms instead of ≈ 80 (docs/benchmarks-daemon.md). Anything
else — another shape, a second TTL, an IPv6 address, any error — is left to
`schema.parse_blocks`, which checks item by item and names the item at fault; both give
the same blocks for a request this module takes (tests/unit/test_bulk_blocks.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Any

from aitherfwd.control.schema import BLOCK_FIELDS, MAX_BLOCKS_PER_REQUEST, parse_block

BULK_MIN_ITEMS = 256  # fewer go item by item: the columns would not pay for themselves
# glibc's and musl's inet_pton take only canonical dotted quads (four decimal parts, no
# leading zeros): what succeeds is a block key as it is (tests/unit/test_block_table_compact)
_PTON4 = partial(socket.inet_pton, socket.AF_INET)
_ADDRESS = itemgetter("address")
_PLAIN = (str, int, type(None))  # the JSON types a TTL or reason may be sent as


@dataclass(frozen=True, slots=True)
class BulkBlocks:
    """The columns of a bulk request: its addresses as sent (canonical IPv4 text, repeats
    kept) and packed (4 bytes each, network order), and the TTL and reason all share."""

    texts: list[str]
    packed: list[bytes]
    ttl: int | None
    reason: str

    def __len__(self) -> int:
        return len(self.texts)


def bulk_v4(body: Any) -> BulkBlocks | None:
    """The request as columns when it has the usual shape, else None (the caller parses it
    item by item: `schema.parse_blocks`). The shared TTL and reason are checked once, as
    the first item's (an error there is the error `parse_blocks` reports first)."""
    items = body.get("blocks") if type(body) is dict and body.keys() == {"blocks"} else None
    if type(items) is not list or not _uniform(items):
        return None
    texts = list(map(_ADDRESS, items))
    if set(map(type, texts)) != {str}:
        return None
    try:
        packed = list(map(_PTON4, texts))
    except (OSError, ValueError):  # not a canonical IPv4 address (ValueError: a NUL)
        return None
    spec = parse_block(items[0], "blocks[0]")
    return BulkBlocks(texts, packed, spec.ttl, spec.reason)


def _uniform(items: list[Any]) -> bool:
    """Enough items, each an object with the same block fields, one TTL, one reason."""
    if not BULK_MIN_ITEMS <= len(items) <= MAX_BLOCKS_PER_REQUEST:
        return False
    if set(map(type, items)) != {dict}:
        return False
    fields = set().union(*items)
    # every item holds exactly `fields`: each holds no other, and as many
    if not fields <= BLOCK_FIELDS or "address" not in fields:
        return False
    if set(map(len, items)) != {len(fields)}:
        return False
    return all(_one_value(items, f) for f in ("ttl", "reason") if f in fields)


def _one_value(items: list[dict[str, Any]], field: str) -> bool:
    """Every item has the same value for `field` (or none), of a plain JSON type. Compared
    by type too: 1, 1.0 and true are one value to a set, not here."""
    values = list(map(dict.get, items, repeat(field)))
    kinds = set(map(type, values))
    return len(kinds) == 1 and kinds.pop() in _PLAIN and len(set(values)) == 1
