"""Watching the policy files for hot reload (layer L2; the only importer of inotify_simple).

Owns: inotify on the directories of the policy and its services file (editors replace
files by rename, so the directory is what to watch), a short debounce, a SHA-256 check of
the files' bytes so only real changes trigger, and a slow poll as a fallback for
filesystems without inotify. Calls `on_change()`; what a reload means is not its business.
Files are read through `adapters.files` (regular files only, bounded: a FIFO or a 768 MB
file at the policy path is never read, only noted) and off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from inotify_simple import INotify, flags

from aitherfwd.adapters.files import read_bytes

log = logging.getLogger(__name__)
DEBOUNCE = 0.05
MASK = (
    flags.CLOSE_WRITE
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.ATTRIB
    | flags.MOVED_FROM
)


def digest(paths: list[Path]) -> str:
    """A hash of the files' bytes; a file that cannot be read (missing, not a regular file,
    too large) counts as the reason it cannot, so it changes the digest once, not at every
    poll. Blocking: call it off the event loop."""
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(read_bytes(p))
        except OSError as exc:
            h.update(f"\0unreadable: {type(exc).__name__} {exc.strerror or exc}\0".encode())
        h.update(b"\0")
    return h.hexdigest()


def stat_fingerprint(paths: list[Path]) -> str:
    """Size, mtime, ctime and inode of each file: for sources too large to hash at every
    poll (a GeoIP database). Blocking: call it off the event loop."""
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}")
        except OSError as exc:
            parts.append(f"unreadable:{type(exc).__name__}")
    return "\0".join(parts)


class PolicyWatcher:
    def __init__(
        self,
        files: Callable[[], list[Path]],
        on_change: Callable[[], Awaitable[object]],
        poll_interval: Callable[[], float],
        fingerprint: Callable[[list[Path]], str] = digest,
    ) -> None:
        self.files = files
        self.fingerprint = fingerprint
        self.on_change = on_change
        self.poll_interval = poll_interval
        self._inotify = INotify(nonblocking=True)
        self._watched: dict[int, Path] = {}
        self._last = fingerprint(files())
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._rewatch()
        loop.add_reader(self._inotify.fileno(), self._readable)
        self._tasks.append(loop.create_task(self._poll(), name="policy-poll"))

    def _rewatch(self) -> None:
        dirs = {p.resolve().parent for p in self.files()}
        for d in dirs - set(self._watched.values()):
            try:
                self._watched[self._inotify.add_watch(d, MASK)] = d
            except OSError as exc:
                log.warning("cannot watch directory path=%s error=%s (polling only)", d, exc)

    def _readable(self) -> None:
        names = {p.name for p in self.files()}
        if any(e.name in names for e in self._inotify.read(timeout=0)):
            loop = asyncio.get_running_loop()
            if self._pending is not None:
                self._pending.cancel()
            self._pending = loop.call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._check("inotify")))

    async def _check(self, why: str) -> None:
        now = await asyncio.to_thread(self.fingerprint, self.files())
        if now == self._last:
            return
        self._last = now
        log.info("policy files changed trigger=%s", why)
        await self.on_change()
        self._rewatch()  # a new services_file may live elsewhere

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval())
            await self._check("poll")

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._inotify.fileno())
        for task in self._tasks:
            task.cancel()
        self._inotify.close()
