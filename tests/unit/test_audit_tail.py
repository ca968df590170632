"""`aitherfwd audit tail`: filters, human-readable lines, and following the file through
its rotation."""

from __future__ import annotations

import ipaddress
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from aitherfwd import audit_records as ar
from aitherfwd.adapters.audit import encode
from aitherfwd.cli import main
from aitherfwd.decisions import from_denial
from aitherfwd.dynamic.detect import Denial
from lab.wait import until


def _lines() -> bytes:
    now = time.time()  # when the test runs, not when the module was collected (`--since`)
    deny = Denial(ipaddress.ip_address("203.0.113.42"), 6, 8111, "denied", "no_secrets")
    blocked = ar.Blocked(
        source_ip="198.51.100.7",
        count=1,
        source="api",
        addresses=("198.51.100.7",),
        ttl=600,
        reason="probe",
        actor=None,
    )
    return (
        encode(now - 7200, ar.DaemonStopped(generation=1))
        + encode(now - 60, from_denial(deny, None))
        + encode(now - 30, blocked)
        + b"not json\n"
    )


def test_tail_filters_by_event_source_and_since_and_reads_like_a_sentence(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(_lines())
    run = CliRunner().invoke
    every = run(main, ["audit", "tail", "--file", str(log), "--no-follow"])
    assert every.exit_code == 0, every.output
    assert len(every.output.splitlines()) == 3  # the junk line is skipped
    (decision,) = run(
        main, ["audit", "tail", "--file", str(log), "--no-follow", "--event", "decision"]
    ).output.splitlines()
    assert "decision  denied  deny 203.0.113.42 → -:8111/tcp (inbound)" in decision
    assert "rule_name=no_secrets" in decision and "class_uid" not in decision
    near = run(main, ["audit", "tail", "--file", str(log), "--no-follow", "--since", "10m"])
    assert "daemon_stopped" not in near.output and len(near.output.splitlines()) == 2
    by_source = run(
        main, ["audit", "tail", "--file", str(log), "--no-follow", "--source", "198.51.100.0/24"]
    )
    (line,) = by_source.output.splitlines()
    assert "blocked  block" in line and "reason=probe" in line
    bad = run(main, ["audit", "tail", "--file", str(log), "--no-follow", "--since", "soon"])
    assert bad.exit_code != 0
    missing = run(main, ["audit", "tail", "--file", str(tmp_path / "nope"), "--no-follow"])
    assert missing.exit_code != 0 and "cannot read" in missing.output


def test_tail_follows_appends_and_the_rotation(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    argv = [sys.executable, "-m", "aitherfwd", "audit", "tail", "--file", str(log), "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)

        def next_line(deadline: float = 10.0) -> str:
            if not sel.select(timeout=deadline):
                raise TimeoutError("audit tail printed nothing")
            return proc.stdout.readline() if proc.stdout else ""

        # the reader has the file open before the first append
        until(lambda: proc.poll() is not None or _opened(proc.pid, log), 10, "tail to open")
        with log.open("ab") as f:
            f.write(encode(time.time(), ar.DaemonStopped(generation=2)))
        assert '"generation":2' in next_line()
        os.rename(log, tmp_path / "audit.jsonl.1")
        log.write_bytes(encode(time.time(), ar.DaemonStopped(generation=3)))
        assert '"generation":3' in next_line()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _opened(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False
