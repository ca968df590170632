"""Every audit line a real daemon writes during the kernel suite fits the record schema
(aitherfwd/audit_records.py, OCSF attributes included): checked after each test, for every
DaemonProc the test started (lab/daemon.py), so an off-schema line fails the test that
wrote it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import daemon


@pytest.fixture(autouse=True)
def audit_lines_fit_the_schema() -> Iterator[None]:
    first = len(daemon.AUDIT_FILES)
    yield
    files, daemon.AUDIT_FILES[first:] = daemon.AUDIT_FILES[first:], []
    problems = [p for path in files for p in daemon.audit_problems(path)]
    assert not problems, "audit lines off the schema:\n" + "\n".join(problems[:20])
