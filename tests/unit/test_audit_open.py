"""How the audit log is opened and rotated (issue 14, items 16 and 17): never through a
symbolic link planted at its path (root would append to whatever it points at), never a
FIFO or device, created 0600 whatever the umask, a world-readable one tightened; rotation
renames links, never follows them. Files only, in a temporary directory; milliseconds."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.audit_records import DaemonStarted

NOW = 1_800_000_000.0
RECORD = DaemonStarted(generation=1, policy_sha256="0" * 64, adopted=False, blocks=0)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_symlink_planted_at_the_audit_path_is_refused_and_nothing_is_appended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:*:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    path = tmp_path / "audit.jsonl"
    path.symlink_to(secret)
    log = AuditLog(path)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            log.write(NOW, RECORD)  # never raises: the audited operation goes on
    assert secret.read_text() == "root:*:19000:0:99999:7:::\n"
    assert log.errors == 3
    assert "symbolic link" in caplog.text
    assert len([r for r in caplog.records if "audit" in r.getMessage()]) == 1  # once, not per line
    path.unlink()  # the administrator removes the link: writing resumes
    log.write(NOW, RECORD)
    assert path.read_text().count("\n") == 1 and not path.is_symlink()


def test_a_fifo_at_the_audit_path_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path)
    log = AuditLog(path)
    started = time.monotonic()
    log.write(NOW, RECORD)
    assert time.monotonic() - started < 1
    assert log.errors == 1


def test_the_audit_log_is_created_0600_whatever_the_umask(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    AuditLog(path).write(NOW, RECORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_world_readable_audit_log_is_tightened(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)
    AuditLog(path).write(NOW, RECORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # group kept (e.g. adm), others gone


def test_rotation_renames_planted_links_and_never_writes_through_them(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep\n")
    path = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.1").symlink_to(secret)
    (tmp_path / "audit.jsonl.2").symlink_to(tmp_path / "dangling")
    log = AuditLog(path, max_bytes=300, keep=3)
    for _ in range(10):
        log.write(NOW, RECORD)
    assert secret.read_text() == "keep\n"
    assert log.errors == 0
    assert not path.is_symlink() and path.stat().st_size > 0
