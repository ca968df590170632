"""The JSONL audit trail writer (layer L2).

Owns: appending one JSON object per line to the audit file with one `write(2)` on an
`O_APPEND` descriptor (a crash loses at most the line being written, and no line is ever
interleaved), size-based rotation (`audit.jsonl` → `.1` … `.keep`), reopening on demand
(SIGHUP, for logrotate), and counting write errors instead of failing the operation that
is being audited. The file is opened as root: never through a symbolic link at its path
(`O_NOFOLLOW`: a link planted there would make root append to whatever it points at),
never a FIFO or device (`O_NONBLOCK`, then `fstat`), created 0600 whatever the umask (an
existing one loses its bits for others); rotation renames, so it never follows a link.

What a line holds is `aitherfwd.audit_records`: one typed record per kind of line, with
`timestamp` (RFC 3339, UTC), `event` and the OCSF-style `action` first. JSON escaping
(`ensure_ascii`) turns control characters, newlines and U+2028/U+2029 into `\\uXXXX`, so
no field can break a line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from pathlib import Path

from aitherfwd.audit_records import AuditRecord, as_json, rfc3339

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "AuditLog", "encode", "rfc3339"]

DEFAULT_MAX_BYTES = 50 << 20
DEFAULT_KEEP = 5
MODE = 0o600
_FLAGS = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | os.O_CLOEXEC
    | os.O_NOFOLLOW
    | os.O_NOCTTY
    | os.O_NONBLOCK
)


def encode(now: float, record: AuditRecord) -> bytes:
    return (json.dumps(as_json(record, now), separators=(",", ":"), default=str) + "\n").encode(
        "ascii"
    )


class AuditLog:
    def __init__(
        self, path: Path | None, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.errors = 0
        self.rotations = 0
        self._fd: int | None = None
        self._size = 0
        self._last_error = ""  # logged once until it changes or a write succeeds

    def _open(self, path: Path) -> int:
        if self._fd is None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._fd = _open_regular(path)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, now: float, record: AuditRecord) -> None:
        if self.path is not None:
            self.write_line(encode(now, record))

    def write_line(self, line: bytes) -> None:
        """Append one encoded line (`encode`'s bytes: one JSON object and a newline)."""
        if self.path is None:
            return
        try:
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self._rotate(self.path)
            os.write(self._open(self.path), line)
            self._size += len(line)
            self._last_error = ""
        except OSError as exc:
            self.errors += 1
            if str(exc) != self._last_error:  # a refused path would log at every line
                self._last_error = str(exc)
                log.error("audit write failed path=%s error=%s", self.path, exc)

    def _rotate(self, path: Path) -> None:
        """Shift the files up by renaming (a rename moves a link, never its target)."""
        self.close()
        for i in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if os.path.lexists(older):
                older.rename(path.with_name(f"{path.name}.{i + 1}"))
        if os.path.lexists(path):
            path.rename(path.with_name(f"{path.name}.1"))
        self.rotations += 1

    def reopen(self) -> None:
        """Close now and open the path again on the next write (after logrotate moved it)."""
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_regular(path: Path) -> int:
    """An O_APPEND descriptor on the regular file at `path` (created 0600), refusing a
    symbolic link, a FIFO, a device or a directory there."""
    try:
        fd = os.open(path, _FLAGS, MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "is a symbolic link; refused (remove it)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file; refused")
        if st.st_mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o770)
            log.warning("audit log was readable by others; mode tightened path=%s", path)
    except OSError:
        os.close(fd)
        raise
    return fd
