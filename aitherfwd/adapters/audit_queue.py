"""An audit sink that never blocks its caller on the disk (layer L2).

Owns: `QueuedAudit`, which takes records from an event loop (or any thread) into a bounded
queue and writes them from one writer thread through an `AuditLog` (adapters/audit.py:
the same `O_APPEND` file, rotation and refusals of links and FIFOs as the daemon's). A
full queue drops the record and counts it (`dropped`) instead of waiting: a disk that
stalls costs lines, never the caller's latency. The thread also calls `on_tick(now,
final)` every `tick` seconds and at close (final) and writes what it returns (the
aggregated lines of a sampler), and
reopens the file on request (`reopen()`, after logrotate moved it) between two lines.

Used by the ASGI middleware (asgi/auditing.py) and the tool-call gateway. Knows nothing
of what a record says.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.audit_records import AuditRecord

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000  # records waiting for the writer; beyond, dropped and counted
DEFAULT_TICK = 1.0
_REOPEN = object()
_STOP = object()

Tick = Callable[[float, bool], Sequence[AuditRecord]]  # (now, final) -> lines


class QueuedAudit:
    def __init__(
        self,
        log_file: AuditLog,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_tick: Tick | None = None,
        tick: float = DEFAULT_TICK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.file = log_file
        self.on_tick = on_tick
        self.tick = tick
        self.clock = clock
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[object] = queue.Queue(max(1, capacity))
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def errors(self) -> int:
        return self.file.errors

    def write(self, now: float, record: AuditRecord) -> None:
        """Queue one line (never blocks): dropped and counted when the queue is full or the
        sink is closed."""
        if self._closed:
            self.dropped += 1
            return
        self._start()
        try:
            self._queue.put_nowait((now, record))
        except queue.Full:
            self.dropped += 1

    def reopen(self) -> None:
        """Reopen the file before the next line (logrotate moved it)."""
        self._start()
        with contextlib.suppress(queue.Full):  # the writer is behind; size rotation holds
            self._queue.put_nowait(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and the last tick's lines, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            self._final()
            return
        self._queue.put(_STOP)  # the writer drains the queue: a free slot comes soon
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "audit writer did not finish within timeout=%.1f path=%s", timeout, self.file.path
            )

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="aitherfwd-audit", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._final()
                return
            if item is _REOPEN:
                self.file.reopen()
            elif isinstance(item, tuple):
                self._write(*item)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick
                self._ticked(final=False)

    def _final(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                self._write(*item)
        self._ticked(final=True)
        self.file.close()

    def _ticked(self, *, final: bool) -> None:
        if self.on_tick is None:
            return
        now = self.clock()
        try:
            records = self.on_tick(now, final)
        except Exception:  # a bug in a sampler must not kill the writer
            log.exception("audit tick failed")
            return
        for record in records:
            self._write(now, record)

    def _write(self, now: float, record: AuditRecord) -> None:
        self.file.write(now, record)
        self.written += 1
