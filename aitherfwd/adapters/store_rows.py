"""The state store's statements for blocks (layer L2): what `Store` sends SQLite.

Owns: the block rows of a write as statements with their parameters — row by row for a
few blocks, JSON arrays of keys that SQLite walks itself (`json_each`) for a request's
many — and how many rows a list of statements counts for the store's pending cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.dynamic.blockrecords import BlockList
from aitherfwd.dynamic.blocks import Block

CLOSE = "UPDATE block_history SET ended_at = ?, end_reason = ? WHERE key = ? AND ended_at IS NULL"
# an upsert, not INSERT OR REPLACE: a re-blocked key's row is updated in place, not deleted
# and inserted again with its index entry (100,000 re-blocks: 98 -> 65 ms)
INSERT = (
    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
    "expires_at = excluded.expires_at, reason = excluded.reason, source = excluded.source, "
    "created_at = excluded.created_at"
)
HISTORY = (
    "INSERT INTO block_history "
    "(key, reason, source, started_at, expires_at, events) VALUES (?, ?, ?, ?, ?, ?)"
)
Statements = tuple[tuple[str, Sequence[tuple[Any, ...]]], ...]
# A bulk block write is one statement per group of blocks sharing expiry, reason, source and
# creation time, its keys one JSON array the statement walks with json_each: the B-tree
# work stays in SQLite's C (100,000 blocks 172 ms instead of 355 ms with executemany, which
# binds five values per row from Python), at most BULK_KEYS keys to a JSON array.
BULK_KEYS = 8192
# (`WHERE true`: SQLite's grammar needs it before an upsert clause of an INSERT ... SELECT)
BULK_BLOCKS = (
    "INSERT INTO blocks SELECT value, ?, ?, ?, ? FROM json_each(?) WHERE true "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, "
    "reason = excluded.reason, source = excluded.source, created_at = excluded.created_at"
)
BULK_HISTORY = (
    "INSERT INTO block_history (key, reason, source, started_at, expires_at, events) "
    "SELECT value, ?, ?, ?, ?, '[]' FROM json_each(?)"
)


BULK_MIN = 32  # smaller groups go row by row (a single ban: 28 µs instead of 39)
BULK_CLOSE = (
    "UPDATE block_history SET ended_at = ?, end_reason = ? "
    "WHERE ended_at IS NULL AND key IN (SELECT value FROM json_each(?))"
)
BULK_DELETE = "DELETE FROM blocks WHERE key IN (SELECT value FROM json_each(?))"
BULK = (BULK_BLOCKS, BULK_HISTORY, BULK_CLOSE, BULK_DELETE)


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
    (100,000 fresh blocks and their history: 129 -> 77 ms; the sort takes 2 ms for keys
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
    """The parameters of `save_blocks`' four statements."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    bulk: list[tuple[Any, ...]] = field(default_factory=list)
    bulk_history: list[tuple[Any, ...]] = field(default_factory=list)


def group_rows(
    group: tuple[Any, ...] | None, keys: list[str], out: Rows, parts: list[str] | None = None
) -> None:
    """One group's rows: its keys as JSON arrays (`parts`: `arrays(keys)`, made already),
    or row by row when there are few."""
    expires, reason, source, created = group or (None, "", "", 0.0)
    if len(keys) < BULK_MIN:
        out.rows += [(k, expires, reason, source, created) for k in keys]
        out.history += [(k, reason, source, created, expires, "[]") for k in keys]
        return
    for text in arrays(keys) if parts is None else parts:
        out.bulk.append((expires, reason, source, created, text))
        out.bulk_history.append((reason, source, created, expires, text))


def closing(
    keys: list[str], now: float, why: str, parts: list[str] | None = None
) -> tuple[str, list[tuple[Any, ...]]]:
    """The statement closing these keys' open history rows (`parts`: as `group_rows`)."""
    if len(keys) < BULK_MIN:
        return CLOSE, [(now, why, k) for k in keys]
    return BULK_CLOSE, [(now, why, text) for text in (arrays(keys) if parts is None else parts)]


def block_statements(
    blocks: Iterable[Block], replaced: Iterable[str], events: dict[str, list[dict[str, Any]]]
) -> Statements:
    """`Store.save_blocks`' statements: close the replaced keys' history rows, then the
    blocks and their history rows (a block with events row by row, with them). A
    `BlockList` is one group already: its texts are the keys."""
    out = Rows()
    if isinstance(blocks, BlockList) and not events:
        shared = (blocks.expires_at, blocks.reason, blocks.source, blocks.created_at)
        texts = blocks.texts
        # the bulk path closes whatever is open for its own keys: their arrays serve both
        parts = list(arrays(texts)) if replaced is texts and len(texts) >= BULK_MIN else None
        group_rows(shared, texts, out, parts)
        return _statements(closing(list(replaced), blocks.created_at, "replaced", parts), out)
    group: tuple[Any, ...] | None = None
    keys: list[str] = []
    now = 0.0
    for blk in blocks:
        k, e, r, s, c = blk
        now = now or c
        if k in events:
            out.rows.append((k, e, r, s, c))
            out.history.append((k, r, s, c, e, json.dumps(events[k])))
            continue
        if group != (e, r, s, c):
            if keys:
                group_rows(group, keys, out)
            group, keys = (e, r, s, c), []
        keys.append(k)
    if keys:
        group_rows(group, keys, out)
    return _statements(closing(list(replaced), now, "replaced"), out)


def _statements(close: tuple[str, list[tuple[Any, ...]]], out: Rows) -> Statements:
    return (
        close,
        (INSERT, out.rows),
        (BULK_BLOCKS, out.bulk),
        (HISTORY, out.history),
        (BULK_HISTORY, out.bulk_history),
    )


def end_statements(keys: list[str], now: float, why: str) -> Statements:
    """`Store.end_blocks`' statements: the blocks deleted, their history rows closed."""
    if len(keys) < BULK_MIN:
        delete = ("DELETE FROM blocks WHERE key = ?", [(k,) for k in keys])
    else:
        delete = (BULK_DELETE, [(text,) for text in arrays(keys)])
    return delete, closing(keys, now, why)
