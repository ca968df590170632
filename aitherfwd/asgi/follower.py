"""The middleware's connection to the daemon: the watch stream and threat reports (I/O).

Owns: `Follower` — one daemon thread that holds `GET /v1/watch` open on the control socket
(standard library `http.client` over the Unix socket, as aitherfwd.client does), feeds each
line to `Followed.apply`, and on any failure (no socket, refused, a 4xx/5xx, a line that does
not fit, no line within `IDLE_TIMEOUT` — the daemon sends a heartbeat every 10 s) tells
`Followed.lost` and reconnects after `RETRY_MIN` doubling to `RETRY_MAX`; and `Reporter` —
one daemon thread that posts queued threat events to `POST /v1/threats` (the `report` role),
at most `REPORT_QUEUE` waiting (beyond: dropped and counted); a 403 (no `report` role) turns
reporting off with one warning.

Threads, not tasks: the server's event loop is the application's; a thread keeps the stream
independent of how (and on how many loops) the application runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aitherfwd.adapters.control_client import ControlClient, UnixHTTPConnection
from aitherfwd.asgi.state import Followed, ProtocolError
from aitherfwd.errors import AitherError

log = logging.getLogger("aitherfwd.asgi")
IDLE_TIMEOUT = 30.0  # seconds without a line (heartbeats come every 10 s) before reconnecting
RETRY_MIN = 0.05
RETRY_MAX = 2.0
MAX_LINE = 64 << 20  # a snapshot line holds at most 1000 blocks; far below this
REPORT_QUEUE = 1000


class Follower:
    def __init__(
        self,
        socket_path: Path,
        state: Followed,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket_path, self.state, self.clock = socket_path, state, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None  # the stream's socket, for stop() to wake

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aitherfwd-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = RETRY_MIN
        while not self._stop.is_set():
            try:
                self._follow()
                reason = "the daemon ended the stream"
            except (OSError, ProtocolError, ValueError, AitherError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
            if self._stop.is_set():
                return
            was_live = self.state.live
            self.state.lost(reason, self.clock())
            delay = RETRY_MIN if was_live else min(delay * 2, RETRY_MAX)
            self._stop.wait(delay)

    def _follow(self) -> None:
        conn = UnixHTTPConnection(self.socket_path, timeout=IDLE_TIMEOUT)
        try:
            conn.connect()
            self._sock = conn.sock
            if self._stop.is_set():
                return
            conn.request("GET", "/v1/watch", headers={"Accept": "application/x-ndjson"})
            with conn.getresponse() as response:
                if response.status != 200:
                    body = response.read(4096).decode("utf-8", "replace")
                    raise ProtocolError(f"GET /v1/watch answered {response.status}: {body}")
                while not self._stop.is_set():
                    line = response.readline(MAX_LINE)
                    if not line:
                        return
                    if not line.endswith(b"\n"):
                        raise ProtocolError("a watch line too long or cut short")
                    self.state.apply(json.loads(line), self.clock())
        finally:
            self._sock = None
            conn.close()


class Reporter:
    """Threat events to the daemon, off the request path."""

    def __init__(self, socket_path: Path, state: Followed) -> None:
        self.client = ControlClient(socket_path, timeout=5.0)
        self.state = state
        self.enabled = True
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(REPORT_QUEUE)
        self._thread: threading.Thread | None = None

    def report(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aitherfwd-report", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.state.counters["reports_dropped"] += 1

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                status, answer = self.client.request("POST", "/v1/threats", event)
            except AitherError as exc:
                self.state.counters["reports_failed"] += 1
                log.debug("threat report failed error=%s", exc.message)
                continue
            if status == 403:
                self.enabled = False
                log.warning(
                    "aitherfwd middleware: this uid lacks the 'report' role; threat reports "
                    "are off answer=%s",
                    answer,
                )
                return
            key = "reports_sent" if status == 200 else "reports_failed"
            self.state.counters[key] += 1
