"""Threats read from the journal (layer L3): the policy's `journal:` sources → the ladder.

Owns: the reading loop — the journal port opened with the sources' matches, after the
cursor persisted in the state store; entries read in batches and judged (dynamic/journal.py)
in a worker thread, so neither the disk nor a slow pattern holds the event loop; the threat
events fed to the reputation service (`threats`, the path of POST /v1/threats); the cursor
saved after each batch was scored; waiting on the journal's descriptor (inotify) with a
timeout as a fallback; reopening after an invalidation (rotation, vacuum), after a policy
change of the matches, and after an error (retried); and the `journal` status counters.

Exactly once, across restarts: the cursor is saved after the batch it ends was scored —
also when the daemon is stopped while the batch's blocks are being written (scoring
happens before the first suspension of `threats` for batches of at most BATCH events). A
SIGKILL between scoring and saving replays that one batch at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aitherfwd.adapters.journal import REALTIME
from aitherfwd.adapters.store import Store
from aitherfwd.clock import Clock
from aitherfwd.control.schema import ThreatSpec
from aitherfwd.daemon.ports import Journal
from aitherfwd.dynamic.journal import JournalHit, judge, matches_for_reader
from aitherfwd.errors import AitherError
from aitherfwd.policy.model import JournalSource, Policy

log = logging.getLogger(__name__)

CURSOR = "journal"  # the store's name for the one cursor of every source
BATCH = 256  # entries read and judged per worker-thread call (≤ the ladder's YIELD_EVERY)
WAIT = 1.0  # seconds: the longest wait for the descriptor before looking again anyway
RETRY = 5.0  # seconds before an unusable journal is opened again
SAVE_EVERY = 1.0  # seconds: a cursor past entries that gave no threat is saved this often

T = TypeVar("T")
ThreatSink = Callable[[Sequence[ThreatSpec]], Awaitable[object]]
Matches = tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]


@dataclass
class JournalStatus:
    listening: bool = False
    sources: int = 0
    entries: int = 0  # entries read that fit a source's match
    threats: int = 0  # threat events sent to the ladder
    bad_addresses: int = 0  # a pattern matched, but gave no valid address
    reopens: int = 0  # after an invalidation or a policy change
    errors: int = 0
    by_source: dict[str, int] = field(default_factory=dict)  # threats per source


@dataclass(frozen=True, slots=True)
class _Batch:
    entries: int
    hits: list[JournalHit]
    bad: int
    cursor: str | None


class JournalService:
    def __init__(
        self, clock: Clock, journal: Journal | None, store: Store, threats: ThreatSink
    ) -> None:
        self.clock, self.journal, self.store, self.threats = clock, journal, store, threats
        self.sources: tuple[JournalSource, ...] = ()
        self.cursor = store.load_cursor(CURSOR)
        self.counters = JournalStatus()
        self.wait, self.retry = WAIT, RETRY
        self._open_for: Matches | None = None  # the matches the journal is open with
        self._wake = asyncio.Event()
        self._saved_at = 0.0
        self._busy: asyncio.Future[Any] | None = None

    def configure(self, policy: Policy) -> None:
        """A policy took effect: its sources; the journal is reopened if the matches changed."""
        self.sources = policy.journal
        self.counters.sources = len(self.sources)
        if matches_for_reader(self.sources) != self._open_for:
            self._wake.set()

    @property
    def _port(self) -> Journal:
        if self.journal is None:
            raise AitherError("no journal port", code="E-JOURNAL")
        return self.journal

    def status(self) -> JournalStatus:
        return self.counters

    async def run(self) -> None:
        """Read until cancelled. Journal errors are logged and retried, never fatal."""
        try:
            while True:
                await self.step()
        finally:
            if self._busy is not None:  # never close the reader under a worker thread
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._busy), 10.0)
            self._close()

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        """`fn` in a worker thread; one at a time, and waited for before closing."""
        self._busy = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(self._busy)
        finally:
            if self._busy.done():
                self._busy = None

    async def step(self) -> None:
        """One turn: (re)open if needed, read and score one batch, or wait for more."""
        if self.journal is None:
            await self._sleep(3600.0)
            return
        want = matches_for_reader(self.sources)
        if not want:
            self._close()
            await self._sleep(3600.0)
            return
        try:
            if want != self._open_for:
                await self._open(want)
            batch = await self._thread(self._read, self.sources)
            if batch.entries or batch.cursor != self.cursor:
                await self._score(batch)
                return
            await self._changed()
            if await self._thread(self.journal.process) == "invalidate":
                self._open_for = None  # files came or went: reopen after the cursor
        except AitherError as exc:
            self.counters.errors += 1
            self._close()
            if self.counters.errors % 60 == 1:  # the first failure, then every 60th (5 min)
                log.error(
                    "journal unavailable; retrying code=%s error=%s failures=%d",
                    exc.code,
                    exc.message,
                    self.counters.errors,
                )
            await self._sleep(self.retry)

    async def _open(self, want: Matches) -> None:
        self._close()
        at = await self._thread(self._port.open, want, self.cursor)
        if self.cursor is None:  # a first start: from the tail, persisted at once
            self._save(at or f"{REALTIME}{int(self.clock.now() * 1_000_000)}")
        self._open_for = want
        self.counters.listening = True
        self.counters.reopens += 1
        log.info("reading the journal sources=%d cursor=%.40s", len(self.sources), self.cursor)

    def _read(self, sources: Sequence[JournalSource]) -> _Batch:
        """In a worker thread: one batch, judged."""
        entries = self._port.read(BATCH)
        hits: list[JournalHit] = []
        fitting = bad = 0
        for entry in entries:
            verdict = judge(entry, sources)
            fitting += verdict.source is not None
            bad += verdict.bad_address is not None
            if verdict.hit is not None:
                hits.append(verdict.hit)
        cursor = entries[-1].get("__CURSOR") if entries else self.cursor
        return _Batch(fitting, hits, bad, cursor)

    async def _score(self, batch: _Batch) -> None:
        c = self.counters
        c.entries += batch.entries
        c.bad_addresses += batch.bad
        specs = [ThreatSpec(h.type, h.address, h.severity, h.detail) for h in batch.hits]
        try:
            if specs:
                await self.threats(specs)
        finally:  # scored (also when cancelled while its blocks are written): never again
            c.threats += len(specs)
            for h in batch.hits:
                c.by_source[h.source] = c.by_source.get(h.source, 0) + 1
            if batch.cursor is not None:
                now = self.clock.monotonic()
                if specs or now - self._saved_at >= SAVE_EVERY:
                    self._save(batch.cursor)
                else:
                    self.cursor = batch.cursor  # saved with the next batch, or at close

    def _save(self, cursor: str) -> None:
        self.cursor = cursor
        self._saved_at = self.clock.monotonic()
        self.store.save_cursor(CURSOR, cursor)

    async def _changed(self) -> None:
        """Until the journal's descriptor is readable, the policy changed, or `wait` s."""
        fd = self._port.fileno()
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.add_reader(fd, self._wake.set)
        try:
            await self._sleep(self.wait)
        finally:
            if fd is not None:
                loop.remove_reader(fd)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def _close(self) -> None:
        if self.cursor is not None and self.store.load_cursor(CURSOR) != self.cursor:
            self.store.save_cursor(CURSOR, self.cursor)
        if self.journal is not None and self._open_for is not None:
            self.journal.close()
        self._open_for = None
        self.counters.listening = False
