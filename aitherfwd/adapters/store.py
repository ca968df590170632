"""The state store: SQLite (WAL), the source of truth for dynamic entries (layer L2).

Owns: the database file under the state directory, its schema, and loading/saving
blocks. The kernel is a projection of this; on start the daemon restores the kernel from
here. Later components (reputation scores, sandbox grants) add their own tables.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from aitherfwd.dynamic.blocks import Block
from aitherfwd.dynamic.reputation import Offender

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key        TEXT PRIMARY KEY,
    expires_at REAL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL
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
"""


class Store:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.path = state_dir / "state.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def load_blocks(self, now: float) -> list[Block]:
        self._db.execute(
            "DELETE FROM blocks WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        )
        rows = self._db.execute(
            "SELECT key, expires_at, reason, source, created_at FROM blocks"
        ).fetchall()
        return [Block(ipaddress.ip_network(k), e, r, s, c) for k, e, r, s, c in rows]

    def save_blocks(self, blocks: Iterable[Block]) -> None:
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)",
                [(b.key, b.expires_at, b.reason, b.source, b.created_at) for b in blocks],
            )

    def delete_blocks(self, keys: Iterable[str]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM blocks WHERE key = ?", [(k,) for k in keys])

    def load_offenders(self) -> dict[str, Offender]:
        rows = self._db.execute(
            "SELECT key, score, updated, blocks, blocked_until, permanent, events FROM offenders"
        ).fetchall()
        return {
            k: Offender(s, u, tuple(json.loads(b)), bu, bool(p), e) for k, s, u, b, bu, p, e in rows
        }

    def save_offenders(self, offenders: dict[str, Offender]) -> None:
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO offenders VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        k,
                        o.score,
                        o.updated,
                        json.dumps(o.blocks),
                        o.blocked_until,
                        int(o.permanent),
                        o.events,
                    )
                    for k, o in offenders.items()
                ],
            )

    def _tx(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db  # the connection's context manager commits or rolls back

    def close(self) -> None:
        self._db.close()
