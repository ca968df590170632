"""The systemd journal, read through systemd-python's `systemd.journal.Reader` (layer L2).

Owns: opening the local journal with the sources' matches (one conjunction per source,
joined by disjunctions, so journald filters before Python sees an entry), positioning after
a saved cursor (or at the tail when there is none), reading entries as plain
field → text mappings with their `__CURSOR`, and the change notifications (`fileno`,
`process`: nop, append, invalidate). Every call may touch the disk: the daemon runs them in
a worker thread, one at a time (daemon/journal.py). Foreign errors become
`AitherError(code="E-JOURNAL")`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aitherfwd.errors import AitherError

log = logging.getLogger(__name__)

REALTIME = "realtime="  # a pseudo-cursor: read from this wall-clock time (microseconds) on
Matches = Sequence[Sequence[tuple[str, Sequence[str]]]]


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flat(entry: dict[str, Any]) -> dict[str, str]:
    return {k: _text(v) for k, v in entry.items()}


class SystemdJournal:
    """The `Journal` port (daemon/ports.py). `path`: a journal directory instead of the
    local journal (tests)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._reader: Any = None
        self._pending: dict[str, str] | None = None  # read while seeking, not yet returned

    def open(self, matches: Matches, cursor: str | None) -> str | None:
        """Read entries fitting `matches` from just after `cursor` (an entry vacuumed since
        is not needed: reading goes on at the first entry after it; `realtime=USEC` reads
        from that time on), or from the tail. Returns the cursor of the last entry before
        the reading position when there is one (to persist at once)."""
        self.close()
        try:
            from systemd import journal  # noqa: PLC0415
        except ImportError as exc:
            raise AitherError("systemd-python is not installed", code="E-JOURNAL") from exc
        try:
            if self.path is not None:
                reader = journal.Reader(path=self.path)
            else:
                reader = journal.Reader(flags=journal.LOCAL_ONLY)
            reader.fileno()  # inotify first: nothing written from here on is missed
            for i, conjunction in enumerate(matches):
                if i:
                    reader.add_disjunction()
                for name, values in conjunction:
                    for value in values:
                        reader.add_match(f"{name}={value}")
            self._reader = reader
            return self._seek(cursor)
        except OSError as exc:
            self.close()
            raise AitherError(f"cannot open the journal: {exc}", code="E-JOURNAL") from exc

    def _seek(self, cursor: str | None) -> str | None:
        r = self._reader
        if cursor is not None and cursor.startswith(REALTIME):
            r.seek_realtime(int(cursor.removeprefix(REALTIME)))
            return None
        if cursor is not None:
            try:
                r.seek_cursor(cursor)
            except (OSError, ValueError):
                log.warning("journal cursor not usable; reading from the end cursor=%.60s", cursor)
            else:
                entry = r.get_next()
                if entry and not r.test_cursor(cursor):  # the cursor's entry is gone:
                    self._pending = _flat(entry)  # this one is the first unread
                return cursor
        r.seek_tail()
        last = r.get_previous()  # on the last entry: get_next gives what comes after it
        return str(last["__CURSOR"]) if last else None

    def read(self, limit: int) -> list[dict[str, str]]:
        r = self._reader
        if r is None:
            return []
        out: list[dict[str, str]] = []
        if self._pending is not None:
            out.append(self._pending)
            self._pending = None
        try:
            while len(out) < limit:
                entry = r.get_next()
                if not entry:
                    break
                out.append(_flat(entry))
        except OSError as exc:
            raise AitherError(f"cannot read the journal: {exc}", code="E-JOURNAL") from exc
        return out

    def fileno(self) -> int | None:
        return int(self._reader.fileno()) if self._reader is not None else None

    def process(self) -> str:
        """After the descriptor was readable: "nop", "append" or "invalidate" (journal
        files were added or removed: rotation, vacuum)."""
        if self._reader is None:
            return "nop"
        from systemd import journal  # noqa: PLC0415

        try:
            state = self._reader.process()
        except OSError as exc:
            raise AitherError(f"cannot follow the journal: {exc}", code="E-JOURNAL") from exc
        return {journal.APPEND: "append", journal.INVALIDATE: "invalidate"}.get(state, "nop")

    def close(self) -> None:
        self._pending = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
