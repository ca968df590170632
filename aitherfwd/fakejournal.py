"""An in-memory journal behind the `Journal` port (daemon/ports.py), shipped for tests.

Owns: `FakeJournal` — entries with cursors ("s=<seq>"), the journal's match rules (values of
one field are alternatives, fields are all required, conjunctions joined by disjunction),
positioning after a cursor or at the tail (a vacuumed cursor: the first entry after it), a
real descriptor (a pipe) that turns readable when entries are appended, rotation and vacuum
(`process` then says "invalidate"), and failures on demand. Re-exported by aitherfwd/testing.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from aitherfwd.errors import AitherError

Matches = Sequence[Sequence[tuple[str, Sequence[str]]]]


class FakeJournal:
    def __init__(self) -> None:
        self.entries: list[tuple[int, dict[str, str]]] = []  # (seq, fields), oldest first
        self.seq = 0
        self.opened: list[tuple[Matches, str | None]] = []  # every open, for assertions
        self.fail_open = 0  # the next N opens fail
        self._matches: Matches | None = None
        self._pos = 0  # seq of the last entry read (or positioned on)
        self._invalid = False
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)

    # --- what a test does -----------------------------------------------------------------

    def append(self, message: str, **fields: str) -> str:
        """An entry; returns its cursor."""
        self.seq += 1
        self.entries.append((self.seq, {"MESSAGE": message, **fields, "__CURSOR": f"s={self.seq}"}))
        os.write(self._wfd, b"x")
        return f"s={self.seq}"

    def vacuum(self, keep: int) -> None:
        """Rotation and vacuum: only the last `keep` entries stay."""
        self.entries = self.entries[-keep:] if keep else []
        self._invalid = True
        os.write(self._wfd, b"x")

    # --- the port -------------------------------------------------------------------------

    def open(self, matches: Matches, cursor: str | None) -> str | None:
        self.opened.append((matches, cursor))
        if self.fail_open:
            self.fail_open -= 1
            raise AitherError("cannot open the journal: fake failure", code="E-JOURNAL")
        self._matches = matches
        if cursor is not None and cursor.startswith("realtime="):
            self._pos = self.seq  # the fake has no clock: from now on
            return None
        if cursor is not None:
            self._pos = int(cursor.removeprefix("s="))
            return cursor
        self._pos = self.seq
        last = [e for s, e in self.entries if self._fits(e)]
        return last[-1]["__CURSOR"] if last else None

    def read(self, limit: int) -> list[dict[str, str]]:
        if self._matches is None:
            return []
        out: list[dict[str, str]] = []
        for seq, entry in self.entries:
            if seq > self._pos and len(out) < limit:
                self._pos = seq
                if self._fits(entry):
                    out.append(dict(entry))
        return out

    def fileno(self) -> int | None:
        return self._rfd if self._matches is not None else None

    def process(self) -> str:
        try:
            drained = os.read(self._rfd, 4096)
        except BlockingIOError:
            drained = b""
        if self._invalid:
            self._invalid = False
            return "invalidate"
        return "append" if drained else "nop"

    def close(self) -> None:
        self._matches = None

    def _fits(self, entry: dict[str, str]) -> bool:
        if self._matches is None:
            return False
        return any(
            all(entry.get(name) in values for name, values in conj) for conj in self._matches
        )
