"""The fleet's outbox: decisions waiting to be published, in the state store (layer L2).

Owns: the `fleet_outbox` table of the state store (its schema lives with the others in
adapters/store.py) — append, peek the oldest, remove what the bus acknowledged — and its
bound: beyond `bound` decisions the oldest rows are dropped (counted), so a bus that is
away for days cannot fill the disk. A row is one message: a single decision, or a chunk of
a batch (fleet/batch.py) counting as the decisions it holds (the `decisions` column, added
on open to an outbox of an older version). It survives a restart of the daemon: what was
decided while the bus was unreachable is published when it is back. A write that fails
(a full disk) drops those decisions from the outbox (counted, logged): enforcement never
depends on it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from aitherfwd.adapters.store import Store

log = logging.getLogger(__name__)
Row = tuple[str, str, bytes, int]  # subject, message id, payload, decisions in it


class Outbox:
    def __init__(self, store: Store, bound: int) -> None:
        self._db = store._db  # the store's own connection: one writer, one file
        self._lock = store.lock  # held by every use of it (a bulk block write is a thread's)
        self.bound = bound
        self.dropped = 0  # decisions given up on (the bound, or a failed write)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(fleet_outbox)")}
        if "decisions" not in columns:
            with self._db:
                self._db.execute(
                    "ALTER TABLE fleet_outbox ADD COLUMN decisions INTEGER NOT NULL DEFAULT 1"
                )
        self.count = int(  # decisions, not rows
            self._db.execute("SELECT coalesce(sum(decisions), 0) FROM fleet_outbox").fetchone()[0]
        )

    def add(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        added = sum(r[3] for r in rows)
        dropped = 0
        try:
            with self._lock, self._db:
                self._db.executemany(
                    "INSERT INTO fleet_outbox (subject, msg_id, payload, decisions) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
                over = self.count + added - self.bound
                if over > 0:  # the oldest rows until `over` decisions are gone
                    old = self._db.execute(
                        "SELECT seq, decisions FROM (SELECT seq, decisions, sum(decisions) "
                        "OVER (ORDER BY seq) AS upto FROM fleet_outbox) WHERE upto - decisions < ?",
                        (over,),
                    ).fetchall()
                    self._db.executemany(
                        "DELETE FROM fleet_outbox WHERE seq = ?", [(s,) for s, _ in old]
                    )
                    dropped = sum(n for _, n in old)
        except sqlite3.Error as exc:
            self.dropped += added
            log.error("fleet outbox write failed; not published decisions=%d error=%s", added, exc)
            return
        if dropped:
            self.dropped += dropped
            log.error("fleet outbox full; oldest decisions dropped decisions=%d", dropped)
        self.count += added - dropped

    def oldest(self, limit: int) -> list[tuple[int, str, str, bytes, int]]:
        """The oldest rows: (seq, subject, message id, payload, decisions)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, subject, msg_id, payload, decisions FROM fleet_outbox "
                "ORDER BY seq LIMIT ?",
                (limit,),
            )
            return [(int(a), str(b), str(c), bytes(d), int(e)) for a, b, c, d, e in cur]

    def remove(self, rows: Sequence[tuple[int, int]]) -> None:
        """Forget published rows: (seq, decisions) each."""
        if not rows:
            return
        try:
            with self._lock, self._db:
                self._db.executemany(
                    "DELETE FROM fleet_outbox WHERE seq = ?", [(s,) for s, _ in rows]
                )
        except sqlite3.Error as exc:  # published anyway; the bus drops the duplicate by id
            log.error("fleet outbox delete failed error=%s", exc)
            return
        self.count = max(0, self.count - sum(n for _, n in rows))
