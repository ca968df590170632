"""The boot test's session hook: remove containers and overlays of dead test processes."""

from __future__ import annotations

import os

import pytest

from tests.systemd.container import remove_leftovers


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        remove_leftovers()
