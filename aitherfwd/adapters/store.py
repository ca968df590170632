"""The state store: SQLite (WAL), the source of truth for dynamic entries (layer L2).

Owns: the database file under the state directory, and loading and saving blocks, block
history, offenders, grants and journal cursors (its schema: `store_schema`; the block
statements: `store_rows`). The kernel is a projection of this; on
start the daemon restores the kernel from here.

Three promises: a database that is only locked by another process is waited for, never
moved aside; one that cannot be trusted (garbage, truncated, a schema from a newer
aitherfwd) is moved aside with a clear log line and a fresh one started — the daemon then
rebuilds from what the kernel holds; one that cannot be written at all (a read-only or
full file system, still locked after the wait) makes the daemon run WITHOUT PERSISTENCE
from an in-memory copy, saying so (`unpersisted`: log, status, STATUS=). A write that fails
later (a full disk, an I/O error) is counted and logged, never raised, because enforcement
must go on. How the file is opened, and its modes: `store_open`.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from aitherfwd.adapters import store_open, store_rows, store_schema
from aitherfwd.adapters.marker import Marker
from aitherfwd.adapters.store_open import Corrupt, Unusable
from aitherfwd.adapters.store_rows import Statements
from aitherfwd.dynamic.blocks import Block, BlockRow
from aitherfwd.dynamic.reputation import Offender
from aitherfwd.egress.sandbox import Grant

log = logging.getLogger(__name__)

HISTORY_PER_ADDRESS = 50  # explain shows at most this many past blocks of one address
# Rows of writes that failed (a full disk), kept in memory and retried in order until they
# go through: a block lifted while the disk was full must not come back at the next start.
# Beyond this many rows the oldest are dropped (counted; the next start reconciles the
# kernel's sets because the incomplete marker is set).
MAX_PENDING_ROWS = 200_000
FLUSH_ROWS = 20_000  # rows of delayed writes retried in one transaction (one loop turn)
# a write this large (a 100,000-ban request) leaves the connection's page cache full (2 MB,
# SQLite's default): give it back; the next write reads its pages from the kernel's cache
SHRINK_ROWS = 10_000
AUTOCHECKPOINT = 1000  # pages: SQLite's default, in force while no large write waits


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    key: str
    reason: str
    source: str
    started_at: float
    expires_at: float | None
    ended_at: float | None
    end_reason: str | None
    events: list[dict[str, Any]]


P = ParamSpec("P")
R = TypeVar("R")


def _locked(fn: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """`fn` holding the store's lock: one thread at a time on the connection."""

    def locked(store: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with store.lock:
            return fn(store, *args, **kwargs)

    return locked


class Store:
    def __init__(self, state_dir: Path, *, lock_wait: float = store_open.LOCK_WAIT) -> None:
        # The connection is used from the event loop, and by a bulk block write from a
        # worker thread while the kernel takes the same blocks (BlockService.block): every
        # method that touches it holds this lock (the fleet outbox too). A loop call that
        # meets a bulk write waits for it, as it waited when the write ran on the loop.
        self.lock = threading.RLock()
        self.path = state_dir / "state.sqlite3"
        self.write_errors = 0
        self.pending: deque[tuple[str, Statements]] = deque()  # failed writes, oldest first
        self.pending_rows = 0
        self.dropped_rows = 0  # pending rows given up on (MAX_PENDING_ROWS)
        self.disk_full = False
        self.checkpoint_due = False  # a large write's WAL is not copied yet (`checkpoint`)
        self._checkpoint_failing = False
        self.recovered: str | None = None  # why the previous database was moved aside
        self.unpersisted: str | None = None  # why nothing is persisted (None: all is)
        try:
            self._db = self._open_file(state_dir, lock_wait)
        except Unusable as exc:
            self.unpersisted = f"{exc.kind}: {exc.reason}"
            log.error(
                "state store unusable; running WITHOUT PERSISTENCE (blocks, offenders and "
                "grants live in memory only until a restart finds it usable) kind=%s error=%s",
                exc.kind,
                exc.reason,
            )
            self._db = store_open.in_memory(self.path, store_schema.prepare, kind=exc.kind)
        # set when a write fails (or nothing is persisted), cleared after a cold start
        # reconciled the kernel's sets; created after the directory exists
        self.incomplete = Marker(state_dir / "incomplete")
        if self.unpersisted is not None:
            self.incomplete.set()

    @property
    def persistent(self) -> bool:
        return self.unpersisted is None

    def _open_file(self, state_dir: Path, lock_wait: float) -> sqlite3.Connection:
        try:
            store_open.prepare_dir(state_dir)
            store_open.private_file(self.path)
        except OSError as exc:
            raise Unusable("unwritable", f"{self.path}: {exc.strerror or exc}") from exc
        try:
            return store_open.open_waiting(self.path, store_schema.prepare, lock_wait)
        except Corrupt as exc:
            try:
                self.recovered = store_open.move_aside(self.path, str(exc))
                store_open.private_file(self.path)
            except OSError as err:
                raise Unusable("unwritable", f"{self.path}: {err.strerror or err}") from err
            return store_open.open_waiting(self.path, store_schema.prepare, lock_wait)

    # --- writes never raise ----------------------------------------------------------------

    @_locked
    def _write(self, what: str, *statements: tuple[str, Sequence[tuple[Any, ...]]]) -> bool:
        """Run the statements in one transaction; on failure (or while earlier writes are
        still pending) keep them, in order, for `flush_pending`, and return False."""
        statements = tuple((sql, rows) for sql, rows in statements if rows)
        if not statements:
            return True
        if not self.pending and self._commit(what, statements, quiet=False):
            return True
        self.pending.append((what, statements))
        self.pending_rows += store_rows.size(statements)
        while self.pending_rows > MAX_PENDING_ROWS and len(self.pending) > 1:
            _, old = self.pending.popleft()
            lost = store_rows.size(old)
            self.pending_rows -= lost
            self.dropped_rows += lost
            log.error("state store gave up on old unwritten rows rows=%d", lost)
        return False  # the housekeeping retries (every 2 s), not each request: cheap while full

    @_locked
    def flush_pending(self, max_rows: int = FLUSH_ROWS) -> bool:
        """Retry the writes that failed, in order: the oldest alone first (a cheap probe
        while the disk is still full), then the next ones as ONE transaction of at most
        `max_rows` rows (a backlog of thousands of small writes must not hold the event
        loop: the housekeeping takes the next part at its next step). False when the store
        still refuses, True when it took a part (`pending` says whether more is left)."""
        if not self.pending:
            return True
        what, statements = self.pending[0]
        if not self._commit(what, statements, quiet=True):
            return False
        self.pending.popleft()
        self.pending_rows -= store_rows.size(statements)
        take: list[tuple[str, Statements]] = []
        rows = 0
        for what, statements in self.pending:
            size = store_rows.size(statements)
            if take and rows + size > max_rows:
                break
            take.append((what, statements))
            rows += size
        merged = tuple(st for _, statements in take for st in statements)
        if take and self._commit("delayed writes", merged, quiet=True):
            for _ in take:
                self.pending.popleft()
            self.pending_rows -= rows
        if not self.pending:
            log.warning("state store caught up: delayed writes persisted")
        return True

    @_locked
    def checkpoint(self) -> None:
        """Copy the WAL into the database after a large write, which did not (one of 100,000
        blocks wrote ≈ 13 MB of WAL; copied in its commit, ≈ 30-60 ms more before the
        request could be answered). Until then the WAL is not copied at any commit, so a
        small write does not pay for a large one either. Called from a thread right after
        the large write's answer, and by the housekeeping as a backstop."""
        if not self.checkpoint_due:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}")
        except sqlite3.Error as exc:  # a full disk: the WAL stays, the next turn tries again
            if not self._checkpoint_failing:  # once, not every housekeeping turn
                log.warning("state store checkpoint failed; retried error=%s", exc)
            self._checkpoint_failing = True
            return
        self.checkpoint_due = self._checkpoint_failing = False

    def _commit(self, what: str, statements: Statements, *, quiet: bool) -> bool:
        try:
            self._db.execute("BEGIN")
            try:
                for sql, rows in statements:
                    self._db.executemany(sql, rows)
                large = store_rows.size(statements) >= SHRINK_ROWS
                if large and not self.checkpoint_due:  # `checkpoint` copies it, after
                    self._db.execute("PRAGMA wal_autocheckpoint = 0")
                    self.checkpoint_due = True
                self._db.execute("COMMIT")
                if large:
                    self._db.execute("PRAGMA shrink_memory")  # its page cache: 2 MB of RSS
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back on its own
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.write_errors += 1
            self.incomplete.set()  # the kernel may now hold what the store does not know
            full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            self.disk_full = self.disk_full or full
            if quiet:  # a retry of a write already reported
                return False
            log.error(
                "state store write failed; the kernel keeps enforcing and the change is kept "
                "in memory until it can be written what=%s rows=%d disk_full=%s error=%s",
                what,
                store_rows.size(statements),
                full,
                exc,
            )
            return False
        self.disk_full = False
        return True

    def save_blocks(
        self, blocks: Iterable[Block], *, events: dict[str, list[dict[str, Any]]] | None = None
    ) -> bool:
        """Active blocks; a key stored already is extended in place (`store_rows`: its start
        and events stay unless new events come). `events` are what led to a block, by
        key. Blocks without events are written a group at a time
        (`store_rows.BULK_BLOCKS`): a request's blocks share expiry, reason, source and
        creation time, so 100,000 are one or two groups."""
        return self._write("blocks", *store_rows.block_statements(blocks, events or {}))

    def blocks_writer(
        self, blocks: Iterable[Block], *, events: dict[str, list[dict[str, Any]]] | None = None
    ) -> Callable[[], bool]:
        """`save_blocks` in two steps: the statements made now, on the caller's thread, and
        written when the returned call runs — in a worker thread, where SQLite's work is
        GIL-free from its first step (made there, the statements had waited for the GIL
        while the event loop put the same blocks in the table)."""
        statements = store_rows.block_statements(blocks, events or {})
        return functools.partial(self._write, "blocks", *statements)

    def end_blocks(self, keys: Iterable[str], now: float, why: str) -> bool:
        """Blocks that ended (unblocked, expired, refused): their rows move from the active
        table to the history, ended now for `why`."""
        return self._write("blocks", *store_rows.end_statements(list(keys), now, why))

    def save_offenders(self, offenders: dict[str, Offender]) -> bool:
        return self._write(
            "offenders",
            (
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
            ),
        )

    def forget_offenders(self, keys: Iterable[str]) -> bool:
        """Offenders pruned from memory (their score decayed, no block): gone on disk too."""
        return self._write(
            "offenders", ("DELETE FROM offenders WHERE key = ?", [(k,) for k in keys])
        )

    def save_grants(self, grants: Iterable[Grant]) -> bool:
        rows = [
            (g.key, g.expires_at, g.scope, json.dumps(g.ports), g.created_at, g.host, g.uid)
            for g in grants
        ]
        return self._write(
            "sandbox", ("INSERT OR REPLACE INTO sandbox_grants VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        )

    def end_grants(self, keys: Iterable[str]) -> bool:
        rows = [(k,) for k in keys]
        return self._write("sandbox", ("DELETE FROM sandbox_grants WHERE key = ?", rows))

    @_locked
    def load_grants(self, now: float) -> list[Grant]:
        """Unexpired grants (the expired ones are deleted)."""
        self._write("sandbox", ("DELETE FROM sandbox_grants WHERE expires_at <= ?", [(now,)]))
        rows = self._db.execute(
            "SELECT key, expires_at, scope, ports, created_at, host, uid FROM sandbox_grants "
            "WHERE expires_at > ? ORDER BY key",
            (now,),
        ).fetchall()
        return [Grant(k, e, s, tuple(json.loads(p)), c, h, u) for k, e, s, p, c, h, u in rows]

    def save_cursor(self, name: str, cursor: str) -> bool:
        """Where journal reading stopped (daemon/journal.py): the last entry handled."""
        return self._write(
            "journal", ("INSERT OR REPLACE INTO journal_cursor VALUES (?, ?)", [(name, cursor)])
        )

    # --- reads -----------------------------------------------------------------------------

    @_locked
    def load_cursor(self, name: str) -> str | None:
        row = self._db.execute(
            "SELECT cursor FROM journal_cursor WHERE name = ?", (name,)
        ).fetchone()
        return str(row[0]) if row else None

    def load_blocks(self, now: float) -> list[Block]:
        """Unexpired blocks; expired ones are closed in the history as they are dropped."""
        return list(self.iter_blocks(now))

    def iter_blocks(self, now: float) -> Iterator[Block]:
        """Unexpired blocks, one row at a time (a cold start of 1,000,000 blocks never holds
        them all as objects: the block table keeps them compact as they come); expired ones
        are closed in the history first. Consume it before the next write."""
        for k, e, r, s, c in self.iter_rows(now):
            yield Block(k, e, r, s, c)

    def iter_rows(self, now: float) -> Iterator[BlockRow]:
        """Like `iter_blocks`, as the store's own tuples (key, expires_at, reason, source,
        created_at), without a `Block` per row: the cold start of 1,000,000 blocks reads
        them straight into the block table (`BlockTable.load_rows`). Expired rows are
        closed in the history before the first row comes. Holds the store's lock until it
        is exhausted or closed (the cold start reads it in a thread of its own)."""
        with self.lock:
            expired = [
                k
                for (k,) in self._db.execute(
                    "SELECT key FROM blocks WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (now,),
                )
            ]
            self.end_blocks(expired, now, "expired")
            yield from self._db.execute(
                "SELECT key, expires_at, reason, source, created_at FROM blocks"
            )

    @_locked
    def load_offenders(self) -> dict[str, Offender]:
        rows = self._db.execute(
            "SELECT key, score, updated, blocks, blocked_until, permanent, events FROM offenders"
        ).fetchall()
        return {
            k: Offender(s, u, tuple(json.loads(b)), bu, bool(p), e) for k, s, u, b, bu, p, e in rows
        }

    @_locked
    def history(self, keys: Sequence[str]) -> list[HistoryEntry]:
        """Past and current blocks of these keys (an address and the prefixes around it),
        newest first: the ended ones from the history, the live ones from `blocks`."""
        marks = ",".join("?" * len(keys))  # only placeholders go into the text
        query = (
            "SELECT key, reason, source, started_at, expires_at, ended_at, end_reason, events "
            "FROM block_history WHERE key IN (" + marks + ") UNION ALL "
            "SELECT key, reason, source, created_at, expires_at, NULL, NULL, events "
            "FROM blocks WHERE key IN (" + marks + ") ORDER BY started_at DESC LIMIT ?"
        )
        rows = self._db.execute(query, (*keys, *keys, HISTORY_PER_ADDRESS)).fetchall()
        return [
            HistoryEntry(k, r, s, st, ex, en, er, json.loads(ev))
            for k, r, s, st, ex, en, er, ev in rows
        ]

    @_locked
    def close(self) -> None:
        if self.pending and not (
            self.flush_pending(max_rows=MAX_PENDING_ROWS + 1) and not self.pending
        ):
            log.error(
                "state store closed with unwritten changes rows=%d (the next start reconciles "
                "the kernel's sets with what the store holds)",
                self.pending_rows,
            )
        self._db.close()
        self.incomplete.close()
