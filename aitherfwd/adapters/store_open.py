"""Opening the state database (layer L2; with `store`, the only importer of sqlite3).

Owns: telling apart the three ways a database can fail to open, and what each means:
- **locked** (SQLITE_BUSY/LOCKED: a backup tool, an open `sqlite3` shell): wait and retry
  with a bounded backoff (LOCK_WAIT seconds in all), never move it aside;
- **corrupt** (garbage, truncated, failing its integrity check, a newer schema): the
  caller moves it aside and starts a new one;
- **unwritable** (a read-only or full file system, a directory that cannot be created,
  permissions): the caller runs without persistence, from an in-memory copy of what the
  file holds when it can be read.
Also the modes: the state directory 0700 and the database 0600 whatever the umask (SQLite
gives its -wal and -shm files the database's mode); existing ones lose their bits for group
and others (never gain one), a directory only when it holds nothing but aitherfwd's files
(a misconfigured shared directory is only warned about).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_WAIT = 20.0  # seconds a locked database is waited for at start (TimeoutStartSec=60s)
BUSY_TIMEOUT = 0.5  # seconds one statement waits for a lock (the event loop waits with it)
DIR_MODE, FILE_MODE = 0o700, 0o600
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_UNWRITABLE = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_AUTH,
    sqlite3.SQLITE_NOLFS,
}
Prepare = Callable[[sqlite3.Connection], None]


class Corrupt(Exception):
    """The database cannot be trusted: move it aside."""


class Unusable(Exception):
    """The database cannot be used for now (`kind`: locked or unwritable): run without
    persistence."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def classify(exc: sqlite3.Error) -> str:
    """locked, unwritable or corrupt, from SQLite's (extended) error code."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _LOCKED:
        return "locked"
    if primary in _UNWRITABLE:
        return "unwritable"
    return "corrupt"


def prepare_dir(state_dir: Path) -> None:
    """Create the directory 0700; tighten an existing one that holds only our files.
    Raises OSError when it cannot be created."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    st = state_dir.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    ours = all(
        p.name.startswith("state.sqlite3") or p.name == "incomplete" for p in state_dir.iterdir()
    )
    if ours and st.st_uid == os.geteuid():
        try:
            state_dir.chmod(mode & DIR_MODE)  # never adds a bit: a 0555 one stays read-only
        except OSError as exc:
            log.warning("cannot tighten the state directory path=%s error=%s", state_dir, exc)
            return
        log.warning(
            "state directory mode tightened path=%s was=%o now=%o", state_dir, mode, mode & DIR_MODE
        )
    else:
        log.warning(
            "state directory is shared with other files; its mode is left as it is "
            "path=%s mode=%o (the database itself is %o)",
            state_dir,
            mode,
            FILE_MODE,
        )


def private_file(path: Path) -> None:
    """The database file exists with FILE_MODE (created so, or tightened), and so do its
    -wal and -shm files. Raises OSError when it cannot be created."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, FILE_MODE)
    os.close(fd)
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o077:
                p.chmod(mode & FILE_MODE)
                log.warning("state file was readable by others; mode tightened path=%s", p)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a read-only file system: opening will say more
            log.warning("cannot tighten state file path=%s error=%s", p, exc)


def open_waiting(path: Path, prepare: Prepare, lock_wait: float) -> sqlite3.Connection:
    """Open and prepare the database, waiting while it is locked (backoff 50 ms doubling to
    2 s, `lock_wait` seconds in all). Raises Corrupt or Unusable."""
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    waited = False
    while True:
        try:
            return _connect(path, prepare)
        except sqlite3.Error as exc:
            kind = classify(exc)
            if kind == "corrupt":
                raise Corrupt(str(exc)) from exc
            if kind == "unwritable":
                raise Unusable(kind, f"{path}: {exc}") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unusable(
                    "locked", f"{path} is locked by another process (waited {lock_wait:g} s)"
                ) from exc
            if not waited:
                log.warning(
                    "state database is locked by another process; waiting up to %g s "
                    "(it is never moved aside for this) path=%s",
                    lock_wait,
                    path,
                )
                waited = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)


def _connect(path: Path | str, prepare: Prepare, *, uri: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT, uri=uri
    )
    try:
        prepare(db)
    except BaseException:
        db.close()
        raise
    return db


def move_aside(path: Path, why: str) -> str:
    """Rename the database and its -wal/-shm to `<name>.bad-<time>`; raises OSError."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.bad-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(target) + suffix))
    log.error(
        "state database unusable, moved aside; starting a new one from what the kernel "
        "holds path=%s moved_to=%s error=%s",
        path,
        target,
        why,
    )
    return f"{why}; moved to {target}"


def in_memory(path: Path, prepare: Prepare, *, kind: str) -> sqlite3.Connection:
    """An in-memory database holding a copy of the file's content when it can be read
    (read-only; `immutable` when the file system is read-only anyway), else empty."""
    mem = _connect(":memory:", lambda db: None)
    flags = "mode=ro" if kind == "locked" else "mode=ro&immutable=1"
    try:
        src = sqlite3.connect(f"{path.absolute().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT)
        try:
            src.backup(mem)
        finally:
            src.close()
        prepare(mem)
        return mem
    except (sqlite3.Error, OSError) as exc:
        log.warning(
            "state database not readable either; starting empty path=%s error=%s", path, exc
        )
        mem.close()
    return _connect(":memory:", prepare)
