"""The state store's statements for blocks (layer L2): what `Store` sends SQLite.

Owns: the block rows of a write as statements with their parameters — row by row for a
few blocks, JSON arrays of keys that SQLite walks itself (`json_each`) for a request's
many — and how many rows a list of statements counts for the store's pending cap.

The model (schema v4): a live block is its row in `blocks` (with the events that led to
it); `block_history` holds the blocks that ended. Blocking a key that is blocked already
extends that block in place — new expiry, reason and source; its start and events stay
unless new events come — as the block table does; the row moves to the history when the
block ends (expired, unblocked, refused by the kernel).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.dynamic.blockrecords import BlockList
from aitherfwd.dynamic.blocks import Block

# A block of a key stored already extends it (see the module's docstring): the upsert's
# update leaves created_at alone, and the events unless new ones come.
INSERT = (
    "INSERT INTO blocks (key, expires_at, reason, source, created_at, events) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, "
    "reason = excluded.reason, source = excluded.source, "
    "events = CASE excluded.events WHEN '[]' THEN blocks.events ELSE excluded.events END"
)
Statements = tuple[tuple[str, Sequence[tuple[Any, ...]]], ...]
# A bulk block write is one statement per group of blocks sharing expiry, reason, source and
# creation time, its keys one JSON array the statement walks with json_each: the B-tree
# work stays in SQLite's C (100,000 blocks 172 ms instead of 355 ms with executemany, which
# binds five values per row from Python), at most BULK_KEYS keys to a JSON array.
BULK_KEYS = 8192
# (`WHERE true`: SQLite's grammar needs it before an upsert clause of an INSERT ... SELECT)
BULK_BLOCKS = (
    "INSERT INTO blocks (key, expires_at, reason, source, created_at, events) "
    "SELECT value, ?, ?, ?, ?, '[]' FROM json_each(?) WHERE true "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, "
    "reason = excluded.reason, source = excluded.source"
)
# an ended block's row, moved to the history (then deleted from `blocks`)
MOVE = (
    "INSERT INTO block_history (key, reason, source, started_at, expires_at, ended_at, "
    "end_reason, events) SELECT key, reason, source, created_at, expires_at, ?, ?, events "
    "FROM blocks WHERE key = ?"
)
BULK_MOVE = (
    "INSERT INTO block_history (key, reason, source, started_at, expires_at, ended_at, "
    "end_reason, events) SELECT key, reason, source, created_at, expires_at, ?, ?, events "
    "FROM blocks WHERE key IN (SELECT value FROM json_each(?))"
)
DELETE = "DELETE FROM blocks WHERE key = ?"
BULK_MIN = 32  # smaller groups go row by row (a single ban: 28 µs instead of 39)
BULK_DELETE = "DELETE FROM blocks WHERE key IN (SELECT value FROM json_each(?))"
BULK = (BULK_BLOCKS, BULK_MOVE, BULK_DELETE)


def size(statements: Statements) -> int:
    """Rows of these statements, for the pending cap: a bulk statement's rows are the
    keys of its JSON array, its last parameter (keys are addresses: no quotes inside)."""
    return sum(
        sum(str(row[-1]).count('", "') + 1 for row in rows) if sql in BULK else len(rows)
        for sql, rows in statements
    )


def arrays(keys: Sequence[str]) -> Iterator[str]:
    """`keys` as JSON arrays of at most BULK_KEYS, written `["a", "b"]`, in sorted order:
    SQLite then meets the B-tree keys in order, each next one on the page it just wrote
    (100,000 fresh blocks with their v3 history rows: 129 -> 77 ms; the sort takes 2 ms for keys
    that came in address order, 22 ms for shuffled ones). Block keys are addresses and
    prefixes, which JSON needs no escape for: joined, 4x faster than `json.dumps`; a part
    with a character that would need one goes through json.dumps."""
    keys = sorted(keys)
    for start in range(0, len(keys), BULK_KEYS):
        part = keys[start : start + BULK_KEYS]
        text = '", "'.join(part)
        if text.isascii() and text.isprintable() and '"' not in "".join(part) and "\\" not in text:
            yield f'["{text}"]'
        else:
            yield json.dumps(part)


@dataclass
class Rows:
    """The parameters of `save_blocks`' two statements."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    bulk: list[tuple[Any, ...]] = field(default_factory=list)


def group_rows(group: tuple[Any, ...] | None, keys: list[str], out: Rows) -> None:
    """One group's rows: its keys as JSON arrays, or row by row when there are few."""
    expires, reason, source, created = group or (None, "", "", 0.0)
    if len(keys) < BULK_MIN:
        out.rows += [(k, expires, reason, source, created, "[]") for k in keys]
        return
    out.bulk += [(expires, reason, source, created, text) for text in arrays(keys)]


def block_statements(
    blocks: Iterable[Block], events: dict[str, list[dict[str, Any]]]
) -> Statements:
    """`Store.save_blocks`' statements: the blocks, a key stored already extended (a block
    with events row by row, with them). A `BlockList` is one group already: its texts are
    the keys."""
    out = Rows()
    if isinstance(blocks, BlockList) and not events:
        shared = (blocks.expires_at, blocks.reason, blocks.source, blocks.created_at)
        group_rows(shared, blocks.texts, out)
        return ((INSERT, out.rows), (BULK_BLOCKS, out.bulk))
    group: tuple[Any, ...] | None = None
    keys: list[str] = []
    for blk in blocks:
        k, e, r, s, c = blk
        if k in events:
            out.rows.append((k, e, r, s, c, json.dumps(events[k])))
            continue
        if group != (e, r, s, c):
            if keys:
                group_rows(group, keys, out)
            group, keys = (e, r, s, c), []
        keys.append(k)
    if keys:
        group_rows(group, keys, out)
    return ((INSERT, out.rows), (BULK_BLOCKS, out.bulk))


def end_statements(keys: list[str], now: float, why: str) -> Statements:
    """`Store.end_blocks`' statements: the blocks' rows moved to the history, ended."""
    if len(keys) < BULK_MIN:
        return (MOVE, [(now, why, k) for k in keys]), (DELETE, [(k,) for k in keys])
    parts = list(arrays(keys))
    return (BULK_MOVE, [(now, why, t) for t in parts]), (BULK_DELETE, [(t,) for t in parts])
