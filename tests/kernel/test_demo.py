"""`make demo` keeps working: run it and check the story it tells."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import ROOT

pytestmark = pytest.mark.kernel


def test_demo_runs_end_to_end() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "decided by: external_deny_sensitive" in out
    assert "dropped   decided by: default" in out
    assert "decided by: blocked" in out
    assert "the kernel lifted the ban on its own" in out
    assert "reputation: temporary block #1 after SENTRY_PORT_SCAN" in out
    assert "auto-blocked" in out and "after PORT_SCAN" in out
    assert "fail-static" in out
    assert "9090/tcp  dropped   decided by: default" in out  # a published container port
    assert "9090/tcp  allowed   decided by: published_web" in out
    assert "9090/tcp  dropped   decided by: blocked" in out
