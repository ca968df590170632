"""The fleet's outbox: decisions waiting to be published, in the state store (layer L2).

Owns: the `fleet_outbox` table of the state store (its schema lives with the others in
adapters/store.py) — append, peek the oldest, remove what the bus acknowledged — and its
bound: beyond `bound` rows the oldest are dropped (counted), so a bus that is away for
days cannot fill the disk. It survives a restart of the daemon: what was decided while the
bus was unreachable is published when it is back. A write that fails (a full disk) drops
those decisions from the outbox (counted, logged): enforcement never depends on it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from aitherfwd.adapters.store import Store

log = logging.getLogger(__name__)
Row = tuple[str, str, bytes]  # subject, message id, payload


class Outbox:
    def __init__(self, store: Store, bound: int) -> None:
        self._db = store._db  # the store's own connection: one writer, one file
        self.bound = bound
        self.dropped = 0  # decisions given up on (the bound, or a failed write)
        self.count = self._db.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0]

    def add(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO fleet_outbox (subject, msg_id, payload) VALUES (?, ?, ?)", rows
                )
                over = self.count + len(rows) - self.bound
                if over > 0:
                    self._db.execute(
                        "DELETE FROM fleet_outbox WHERE seq IN "
                        "(SELECT seq FROM fleet_outbox ORDER BY seq LIMIT ?)",
                        (over,),
                    )
        except sqlite3.Error as exc:
            self.dropped += len(rows)
            log.error("fleet outbox write failed; not published rows=%d error=%s", len(rows), exc)
            return
        if over > 0:
            self.dropped += over
            log.error("fleet outbox full; oldest decisions dropped rows=%d", over)
        self.count = min(self.bound, self.count + len(rows))

    def oldest(self, limit: int) -> list[tuple[int, str, str, bytes]]:
        cur = self._db.execute(
            "SELECT seq, subject, msg_id, payload FROM fleet_outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [(int(a), str(b), str(c), bytes(d)) for a, b, c, d in cur]

    def remove(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        try:
            with self._db:
                self._db.executemany("DELETE FROM fleet_outbox WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as exc:  # published anyway; the bus drops the duplicate by id
            log.error("fleet outbox delete failed error=%s", exc)
            return
        self.count = max(0, self.count - len(seqs))
