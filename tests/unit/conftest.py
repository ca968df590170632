"""Every audit line the gateway and the middleware write during the unit tests fits the
record schema (aitherfwd/audit_records.py, OCSF attributes included): the files they were
given (lab/auditfiles.py `register`) are read after each test, from where they were last
read, so an off-schema line fails the test that wrote it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import auditfiles


@pytest.fixture(autouse=True)
def audit_lines_fit_the_schema() -> Iterator[None]:
    yield
    problems = auditfiles.new_problems()
    assert not problems, "audit lines off the schema:\n" + "\n".join(problems[:20])
