"""The store's "incomplete" marker: one byte in `state_dir/incomplete` (layer L2).

Owns: remembering, across restarts, that the state store missed a write (a full disk, an
I/O error) while the kernel kept enforcing — so the next cold start lists every dynamic
set of the kernel and adopts what the store never recorded, instead of trusting a store
that looks healthy but is not complete.

The file is created (one byte, `0`) when the store opens, so marking it later is an
in-place overwrite of an allocated byte: it needs no new block, and works on a full disk.
A marker that cannot be opened (a read-only state directory) reads as set: the store
cannot be shown complete, and the cost is one listing at the next start.
Imports nothing of aitherfwd.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
CLEAN, DIRTY = b"0", b"1"


class Marker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("store marker unavailable path=%s error=%s", path, exc)
            return
        try:
            if os.fstat(fd).st_size == 0:
                os.pwrite(fd, CLEAN, 0)
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            log.warning("store marker unavailable path=%s error=%s", path, exc)
            return
        self._fd = fd

    @property
    def is_set(self) -> bool:
        if self._fd is None:
            return True
        try:
            return os.pread(self._fd, 1, 0) != CLEAN
        except OSError:
            return True

    def set(self) -> None:
        self._put(DIRTY)

    def clear(self) -> None:
        self._put(CLEAN)

    def _put(self, value: bytes) -> None:
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, value, 0)
            os.fsync(self._fd)
        except OSError as exc:
            log.error("store marker not written path=%s error=%s", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
