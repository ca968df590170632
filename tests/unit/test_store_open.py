"""How the state store opens (issue 14, items 5 and 17): a database only locked by
another process is waited for and never moved aside; one that cannot be written makes the
store run without persistence, saying so; the directory is 0700 and the database 0600
whatever the umask. The lock is held by a real second process (`BEGIN EXCLUSIVE`)."""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.store import Store
from aitherfwd.dynamic.blocks import Block
from aitherfwd.dynamic.reputation import Offender
from aitherfwd.egress.sandbox import Grant

NOW = 1_800_000_000.0
HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def _populate(state: Path) -> None:
    store = Store(state)
    net = ipaddress.ip_network("203.0.113.7")
    store.save_blocks([Block.of(net, NOW + 600, "scanner seen by sentry", "reputation", NOW)])
    store.save_offenders({"203.0.113.7": Offender(4.0, NOW, (NOW,), NOW + 600, False, 7)})
    store.save_grants([Grant("93.184.216.34", NOW + 600, "sandbox-alice", (443,), NOW)])
    store.close()


def _assert_everything_is_there(store: Store) -> None:
    assert [(b.key, b.reason) for b in store.load_blocks(NOW)] == [
        ("203.0.113.7", "scanner seen by sentry")
    ]
    assert store.load_offenders()["203.0.113.7"].events == 7
    assert [(g.key, g.scope) for g in store.load_grants(NOW)] == [
        ("93.184.216.34", "sandbox-alice")
    ]


@pytest.fixture
def locker() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(5)


def _hold_lock(db: Path, seconds: float, procs: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"


def test_a_database_locked_at_start_is_waited_for_and_keeps_everything(
    tmp_path: Path, locker: list[subprocess.Popen[str]]
) -> None:
    _populate(tmp_path)
    _hold_lock(tmp_path / "state.sqlite3", 1.5, locker)
    store = Store(tmp_path, lock_wait=15)
    assert store.persistent and store.recovered is None
    assert not list(tmp_path.glob("*.bad-*"))
    _assert_everything_is_there(store)
    store.close()


def test_a_database_locked_too_long_runs_without_persistence_and_is_never_moved(
    tmp_path: Path, locker: list[subprocess.Popen[str]]
) -> None:
    _populate(tmp_path)
    _hold_lock(tmp_path / "state.sqlite3", 30, locker)
    store = Store(tmp_path, lock_wait=0.5)
    assert not store.persistent
    assert store.unpersisted is not None and store.unpersisted.startswith("locked")
    assert store.recovered is None and not list(tmp_path.glob("*.bad-*"))
    _assert_everything_is_there(store)  # read from the locked file into memory
    assert store.save_blocks([])  # writes go to memory, never raise
    store.close()
    locker[0].kill()
    locker[0].wait(5)
    _assert_everything_is_there(Store(tmp_path))  # nothing was lost


def test_an_unwritable_state_directory_runs_without_persistence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = Store(tmp_path / "file" / "state")  # cannot be created, even by root
    assert not store.persistent
    assert store.unpersisted is not None and store.unpersisted.startswith("unwritable")
    net = ipaddress.ip_network("198.51.100.1")
    assert store.save_blocks([Block.of(net, None, "manual", "manual", NOW)])
    assert [b.key for b in store.load_blocks(NOW)] == ["198.51.100.1"]


@pytest.mark.unprivileged  # root overrides the modes (tests/kernel mounts the directory ro)
def test_a_read_only_state_directory_keeps_its_content_in_memory(tmp_path: Path) -> None:
    _populate(tmp_path / "state")
    (tmp_path / "state").chmod(0o555)
    (tmp_path / "state" / "state.sqlite3").chmod(0o444)
    try:
        store = Store(tmp_path / "state")
        assert not store.persistent
        _assert_everything_is_there(store)
    finally:
        (tmp_path / "state").chmod(0o700)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_directory_and_database_are_private_whatever_the_umask(
    tmp_path: Path, umask_022: None
) -> None:
    _populate(tmp_path / "state")
    assert _mode(tmp_path / "state") == 0o700
    for f in (tmp_path / "state").iterdir():
        assert _mode(f) == 0o600, f


def test_an_existing_open_state_directory_and_database_are_tightened(
    tmp_path: Path, umask_022: None
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    Store(state).close()
    state.chmod(0o755)
    (state / "state.sqlite3").chmod(0o644)
    Store(state).close()
    assert _mode(state) == 0o700
    assert _mode(state / "state.sqlite3") == 0o600


def test_a_shared_state_directory_is_left_alone_but_the_database_is_private(
    tmp_path: Path, umask_022: None
) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "somebody-elses-file").write_text("")
    Store(tmp_path).close()
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "state.sqlite3") == 0o600


def test_writes_that_fail_on_a_full_disk_are_retried_in_order_once_there_is_room(
    tmp_path: Path,
) -> None:
    """A block lifted while the disk was full must not come back at the next start."""
    store = Store(tmp_path / "state")
    net = ipaddress.ip_network("198.51.100.7")
    assert store.save_blocks([Block.of(net, None, "manual", "manual", NOW)])
    real = store._db
    store._db = _FullDisk(real)  # every statement fails with SQLITE_FULL
    assert not store.end_blocks(["198.51.100.7"], NOW, "unblocked")
    assert not store.save_blocks(
        [Block.of(ipaddress.ip_network("198.51.100.8"), None, "m", "m", NOW)]
    )
    assert store.disk_full and len(store.pending) == 2 and store.pending_rows > 0
    assert not store.flush_pending()  # still full
    store._db = real  # room again
    assert store.flush_pending()
    assert store.pending_rows == 0 and not store.disk_full
    store.close()
    again = Store(tmp_path / "state")
    assert [b.key for b in again.load_blocks(NOW)] == ["198.51.100.8"]
    again.close()


class _FullDisk:
    """A sqlite3 connection whose every statement fails as on a full disk."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.in_transaction = False

    def execute(self, sql: str, *args: Any) -> Any:
        err = sqlite3.OperationalError("database or disk is full")
        err.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise err

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.execute(sql)
