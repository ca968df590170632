"""The state store's schema (layer L2): its tables and how a database is brought to it.

Owns: `SCHEMA` and `SCHEMA_VERSION`, and `prepare`, which checks a freshly opened database
(its version, its integrity) and creates what is missing — `Store` opens through it
(adapters/store_open.py).
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 4
# Version 1 (the first release) had no user_version and no history; v2 adds the history;
# v3 adds sandbox grants (created on open, like v2's history). journal_cursor (where the
# journal sources stopped reading) and the fleet's outbox (adapters/outbox.py) are created on
# open too; older versions ignore them. v4: a live block is its row in `blocks`, with its
# events; the history holds the blocks that ended (adapters/store_rows.py). Up to v3 the
# history also held an open row per live block, which a re-block closed and opened again:
# 100,000 re-blocks wrote 300,000 rows, now 100,000. `_to_v4` moves them over.
SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key        TEXT PRIMARY KEY,
    expires_at REAL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL,
    events     TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS offenders (
    key           TEXT PRIMARY KEY,
    score         REAL NOT NULL,
    updated       REAL NOT NULL,
    blocks        TEXT NOT NULL,
    blocked_until REAL,
    permanent     INTEGER NOT NULL,
    events        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS block_history (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    started_at REAL NOT NULL,
    expires_at REAL,
    ended_at   REAL,
    end_reason TEXT,
    events     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS block_history_key ON block_history (key, started_at);
CREATE TABLE IF NOT EXISTS sandbox_grants (
    key        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    scope      TEXT NOT NULL,
    ports      TEXT NOT NULL,
    created_at REAL NOT NULL,
    host       TEXT,
    uid        INTEGER
);
CREATE TABLE IF NOT EXISTS journal_cursor (name TEXT PRIMARY KEY, cursor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_outbox (
    seq        INTEGER PRIMARY KEY,
    subject    TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    payload    BLOB NOT NULL
);
"""


def prepare(db: sqlite3.Connection) -> None:
    """Check a freshly opened database and bring its schema up to date, in a write
    transaction (so a lock held by another process shows here, as SQLITE_BUSY)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this aitherfwd understands ({SCHEMA_VERSION})"
        )
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {check}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(blocks)")}
        for statement in _statements(SCHEMA):
            db.execute(statement)
        if columns and "events" not in columns:
            _to_v4(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    # a version-1 database may hold rows of another shape: read one of each to be sure
    db.execute("SELECT key, expires_at, reason, source, created_at FROM blocks LIMIT 1")
    db.execute("SELECT key, score, updated, blocks FROM offenders LIMIT 1")


def _statements(script: str) -> list[str]:
    """The statements of a script of ours (no `;` inside a statement), to run one at a
    time inside a transaction `prepare` controls (`executescript` would commit first)."""
    return [part.strip() for part in script.split(";") if part.strip()]


def _to_v4(db: sqlite3.Connection) -> None:
    """A v1-v3 database into v4, in `prepare`'s transaction: `blocks` takes the events of
    its open history rows, which go (the blocks rows are the live blocks now); an open row
    of a block the store no longer holds is closed, as ended at its expiry (or start)."""
    db.execute("ALTER TABLE blocks ADD COLUMN events TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        "UPDATE blocks SET events = coalesce((SELECT h.events FROM block_history h "
        "WHERE h.key = blocks.key AND h.ended_at IS NULL ORDER BY h.started_at DESC LIMIT 1), "
        "'[]')"
    )
    db.execute(
        "DELETE FROM block_history WHERE ended_at IS NULL AND key IN (SELECT key FROM blocks)"
    )
    db.execute(
        "UPDATE block_history SET ended_at = coalesce(expires_at, started_at), "
        "end_reason = 'unknown' WHERE ended_at IS NULL"
    )
