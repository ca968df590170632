"""The real daemon against bad files and disks (issue 14, items 4, 5, 10, 16): a policy
nested 100,000 deep at start and at reload, a FIFO and a 768 MB sparse file at the policy
path, a state database locked by another process or on a read-only mount, and a symbolic
link planted at the audit path. Each in its own network namespace (loopback only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.daemon import DaemonProc
from lab.wait import until

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22], rule_reload_interval: 1}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
"""
DEEP = "version: 1\nrules:\n  - " + "[" * 100_000
HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""
# the daemon in a private mount namespace where its state directory is read-only
READ_ONLY = """
import os, subprocess, sys
state = sys.argv[1]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "--bind", state, state], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", state, state], check=True)
os.execvp(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture
def ns() -> Iterator[str]:
    name = netns.create()
    try:
        yield name
    finally:
        netns.delete(name)


def _health_within(d: DaemonProc, seconds: float) -> float:
    started = time.monotonic()
    assert d.request("GET", "/v1/health")[0] == 200
    took = time.monotonic() - started
    assert took < seconds
    return took


def test_a_deep_policy_at_start_exits_3_with_the_located_error(ns: str, tmp_path: Path) -> None:
    d = DaemonProc(ns, tmp_path, DEEP)
    try:
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 3
        assert f"{d.policy}:3:" in d.output() and "E-YAML" in d.output()
        assert "Traceback" not in d.output()
    finally:
        d.cleanup()


def test_deep_fifo_and_huge_policy_files_are_rejected_while_the_daemon_answers(
    ns: str, tmp_path: Path
) -> None:
    with DaemonProc(ns, tmp_path, POLICY).start() as d:
        rss_before = d.rss_mb()
        d.policy.write_text(DEEP)  # the watcher reloads it
        until(
            lambda: d.ok("GET", "/v1/status")["last_reload"]["result"] == "rejected",
            10,
            "the deep file rejected",
        )
        status = d.ok("GET", "/v1/status")
        assert status["last_reload"]["errors"][0]["code"] == "E-YAML"
        answer = d.ok("POST", "/v1/reload", {})
        assert answer["result"] == "rejected" and answer["errors"][0]["code"] == "E-YAML"
        d.policy.unlink()
        os.mkfifo(d.policy)  # nobody ever writes to it
        deadline = time.monotonic() + 3  # several polls and inotify events
        while time.monotonic() < deadline:
            _health_within(d, 1.0)
            time.sleep(0.1)
        answer = d.ok("POST", "/v1/reload", {})
        assert answer["errors"][0]["code"] == "E-FILE"
        assert "not a regular file" in answer["errors"][0]["message"]
        d.policy.unlink()
        with d.policy.open("wb") as fh:
            fh.truncate(768 << 20)  # sparse: no disk used
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            _health_within(d, 1.0)
            time.sleep(0.2)
        assert d.ok("POST", "/v1/reload", {})["errors"][0]["code"] == "E-FILE"
        assert d.rss_mb() < rss_before + 50
        rejected = [e for e in d.audit_events() if e["event"] == "reload_rejected"]
        assert len(rejected) >= 4
        d.policy.unlink()
        d.policy.write_text(POLICY.replace("[22]", "[22, 2222]"))
        assert d.ok("POST", "/v1/reload", {})["result"] == "applied"
        assert d.proc is not None and d.proc.poll() is None


def test_a_database_locked_at_start_keeps_every_block_and_reason(ns: str, tmp_path: Path) -> None:
    with DaemonProc(ns, tmp_path, POLICY).start() as d:
        d.post("/v1/blocks", {"address": "203.0.113.7", "reason": "seen by sentry"})
        d.post("/v1/threats", {"type": "PORT_SCAN", "source_ip": "198.51.100.9"})
        assert d.stop() == 0
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(d.state / "state.sqlite3"), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            d.start(deadline_s=30)
            status = d.ok("GET", "/v1/status")
            assert status["store"]["persistent"] and status["store"]["recovered"] is None
            blocks = {b["address"]: b["reason"] for b in d.ok("GET", "/v1/blocks")["blocks"]}
            assert blocks == {"203.0.113.7": "seen by sentry"}
            explained = d.ok("GET", "/v1/explain/198.51.100.9")
            assert explained["reputation"]["events"] == 1
            assert not list(d.state.glob("*.bad-*"))
            assert "locked by another process" in d.output()
        finally:
            holder.kill()
            holder.wait(5)


def test_a_read_only_state_directory_runs_without_persistence_and_says_so(
    ns: str, tmp_path: Path
) -> None:
    class ReadOnlyState(DaemonProc):
        def argv(self) -> list[str]:
            inner = super().argv()
            return ["unshare", "--mount", sys.executable, "-c", READ_ONLY, str(self.state), *inner]

    with DaemonProc(ns, tmp_path, POLICY).start() as d:
        d.post("/v1/blocks", {"address": "203.0.113.7", "reason": "kept"})
        assert d.stop() == 0
    with ReadOnlyState(ns, tmp_path, POLICY).start() as ro:
        status = ro.ok("GET", "/v1/status")
        assert status["store"]["persistent"] is False
        assert status["store"]["unpersisted"].startswith("unwritable")
        blocks = {b["address"]: b["reason"] for b in ro.ok("GET", "/v1/blocks")["blocks"]}
        assert blocks == {"203.0.113.7": "kept"}
        ro.post("/v1/blocks", {"address": "198.51.100.1"})  # works, in memory
        assert "WITHOUT PERSISTENCE" in ro.output()
        assert "Traceback" not in ro.output()


def test_a_symlink_planted_at_the_audit_path_is_never_written_through(
    ns: str, tmp_path: Path
) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    d = DaemonProc(ns, tmp_path, POLICY)
    d.audit.symlink_to(secret)
    with d.start():
        d.post("/v1/blocks", {"address": "203.0.113.7"})
        d.send(signal.SIGHUP)  # reopen: refused again
        until(
            lambda: d.ok("GET", "/v1/status")["audit"]["write_errors"] >= 2,
            10,
            "audit refusals counted",
        )
        assert secret.read_text() == "secret\n"
        assert "symbolic link" in d.output()
        assert d.request("GET", "/v1/health")[0] == 200
