"""Audit of refused control requests, aggregated per peer and rate-limited (layer L3).

Owns: turning a flood of refusals into a bounded number of audit lines. Per sink (access
denials → the audit trail, a security event; rejected requests → the request-noise file)
and per peer uid: the first refusal after a quiet interval is written at once; further
ones within `interval` seconds are counted, and `flush` (called every second or so) writes
one line per peer per interval that stands for them (`count`, the last one's details).
At most `max_peers` uids are followed per sink at once; refusals of further uids are
aggregated together under the one they arrive after (never more lines, never lost counts).
Client text is truncated (`path` 128, `reason` 200 characters) before it reaches a line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from aitherfwd.audit_records import AccessDenied, AuditRecord, RequestRejected

MAX_PATH = 128
MAX_REASON = 200
OVERFLOW = -1  # the key of refusals from uids beyond max_peers


class Sink(Protocol):
    def write(self, now: float, record: AuditRecord) -> None: ...


@dataclass(slots=True)
class _Window:
    start: float
    pending: int = 0
    last: AccessDenied | RequestRejected | None = None


class _Aggregator:
    def __init__(self, sink: Sink, interval: float, max_peers: int) -> None:
        self.sink, self.interval, self.max_peers = sink, interval, max_peers
        self.windows: dict[int, _Window] = {}
        self.lines = 0  # written, for tests and metrics

    def add(self, now: float, uid: int, record: AccessDenied | RequestRejected) -> None:
        if uid not in self.windows and len(self.windows) >= self.max_peers:
            uid = OVERFLOW
        window = self.windows.get(uid)
        if window is None:
            self.windows[uid] = _Window(now)
            self._write(now, record, 1)
            return
        window.pending += 1
        window.last = record

    def flush(self, now: float, *, final: bool = False) -> None:
        for uid, window in list(self.windows.items()):
            if not final and now - window.start < self.interval:
                continue
            if window.pending and window.last is not None:
                self._write(now, window.last, window.pending)
                window.start, window.pending, window.last = now, 0, None
            else:
                del self.windows[uid]

    def _write(self, now: float, record: AccessDenied | RequestRejected, count: int) -> None:
        self.sink.write(now, replace(record, count=count))
        self.lines += 1


class Rejections:
    """`denied` and `rejected` are called for every refusal; `flush` by a timer."""

    def __init__(self, trail: Sink, noise: Sink, interval: float = 10.0, max_peers: int = 32):
        self.denials = _Aggregator(trail, interval, max_peers)
        self.rejections = _Aggregator(noise, interval, max_peers)

    def denied(self, now: float, record: AccessDenied) -> None:
        record = replace(record, path=record.path[:MAX_PATH])
        self.denials.add(now, int(record.actor.get("uid", OVERFLOW)), record)

    def rejected(self, now: float, record: RequestRejected) -> None:
        record = replace(record, path=record.path[:MAX_PATH], reason=record.reason[:MAX_REASON])
        self.rejections.add(now, int(record.actor.get("uid", OVERFLOW)), record)

    def flush(self, now: float, *, final: bool = False) -> None:
        """Write the counts of windows that are over (all of them when `final`)."""
        self.denials.flush(now, final=final)
        self.rejections.flush(now, final=final)
