"""`make demo` keeps working: run it and check the story it tells."""

from __future__ import annotations

import re
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
        timeout=150,
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
    # the tool-call gateway: decisions, and the network following the allowed call
    gateway = out[out.index("The tool-call gateway") : out.index("The ASGI middleware")]
    outbound = re.findall(r"outbound tcp -> \S+:8080  (\w+)", gateway)
    assert outbound == ["refused", "ok", "refused"], gateway
    assert '-> {"allowed": true, "network": {"host": ' in gateway
    assert '-> {"allowed": false, "reason": "tool is explicitly denied"}' in gateway
    assert '-> {"allowed": false, "reason": "path not in allowlist"}' in gateway
    # the ASGI middleware behind a proxy: a path rule, then a daemon block within a second
    middleware = out[out.index("The ASGI middleware") :]
    assert 'GET / (via the proxy) -> 200 "hello /"' in middleware
    assert '-> 403 {"error": "forbidden", "rule": "private_paths"' in middleware
    took = re.search(r"the middleware refused \S+ (\d+) ms after the block", middleware)
    assert took is not None and int(took.group(1)) < 1000, middleware
    assert '-> 403 {"error": "forbidden", "rule": null' in middleware
    assert "GET / (via the proxy) -> 200 again" in middleware
