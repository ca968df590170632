"""The JSONL audit trail writer (layer L2).

Owns: appending one JSON object per line to the audit file, line-buffered so a crash
loses at most the line being written, and counting write errors instead of failing the
operation that is being audited. Record shapes are decided by the caller.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.errors = 0
        self._fh: TextIO | None = None

    def _open(self) -> TextIO:
        if self._fh is None:
            if self.path is None:
                raise OSError("no audit log path")
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        return self._fh

    def write(self, now: float, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"timestamp": rfc3339(now), "event": event, **fields}
        try:
            self._open().write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except OSError as exc:
            self.errors += 1
            log.error("audit write failed path=%s error=%s", self.path, exc)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
