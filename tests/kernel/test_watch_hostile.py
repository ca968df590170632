"""`GET /v1/watch` against a hostile read-only user of the real daemon (`nobody`, setpriv):
its streams are capped per uid, streams it never reads are cut off and their slots given
back, the administrator is answered meanwhile; and the middleware itself runs with the `read`
role alone (its threat reports refused once, then off)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import ROOT, netns
from lab.daemon import DaemonProc
from lab.wait import until

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

POLICY = """\
version: 1
settings: {default_policy: deny}
rules:
  - {name: web, dest_ports: [8000], protocol: tcp, action: allow}
"""
CONFIG = """\
[control]
group = "nogroup"
watchers_per_uid = 2
[roles]
read = {users = ["nobody"]}
"""
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# Opens `n` watch streams, prints each one's status line, then holds them, reading nothing,
# until its stdin closes.
HOLDER = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
socks, statuses = [], []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: a\r\n\r\n")
    s.settimeout(5)
    statuses.append(int(s.recv(64).split()[1]))
    socks.append(s)
print(json.dumps(statuses), flush=True)
sys.stdin.read()
"""

# The middleware as this user: follows the daemon, then tries a threat report.
MIDDLEWARE = r"""
import json, sys, time
from aitherfwd.asgi import FirewallMiddleware
async def app(scope, receive, send):
    pass
mw = FirewallMiddleware(app, socket=sys.argv[1])
mw.start()
end = time.monotonic() + 10
while not mw.state.live and time.monotonic() < end:
    time.sleep(0.02)
mw.reporter.report({"type": "HTTP_AUTH_FAILURES", "source_ip": "203.0.113.5"})
while mw.reporter.enabled and time.monotonic() < end:
    time.sleep(0.02)
mw.reporter.report({"type": "HTTP_AUTH_FAILURES", "source_ip": "203.0.113.5"})
print(json.dumps({**mw.stats(), "reporting": mw.reporter.enabled}), flush=True)
mw.close()
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    with netns.namespace() as ns, DaemonProc(ns, tmp_path, POLICY, CONFIG) as d:
        d.start()
        yield d


def hold(d: DaemonProc, n: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [*NOBODY, "/usr/bin/python3", "-c", HOLDER, str(d.socket), str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(proc.stderr.read() if proc.stderr else "holder failed")
    return proc, json.loads(line)


def test_a_read_only_user_cannot_hold_more_streams_than_its_cap(daemon: DaemonProc) -> None:
    holder, statuses = hold(daemon, 3)
    try:
        assert statuses == [200, 200, 429]
        # the administrator watches and blocks meanwhile
        started = time.monotonic()
        daemon.ok("GET", "/v1/health")
        assert time.monotonic() - started < 1.0
    finally:
        holder.kill()
        holder.wait(5)
    # the slots come back once the peer is gone
    again, statuses = hold(daemon, 2)
    again.kill()
    again.wait(5)
    assert statuses == [200, 200]


def test_streams_that_are_never_read_are_cut_off_and_freed(daemon: DaemonProc) -> None:
    holder, statuses = hold(daemon, 2)
    try:
        assert statuses == [200, 200]
        # ~1 MB of block lines for each stream: more than the socket buffers take
        blocks = [{"address": f"198.51.{i // 250}.{i % 250 + 1}"} for i in range(20_000)]
        daemon.ok("POST", "/v1/blocks", {"blocks": blocks})
        started = time.monotonic()
        daemon.ok("GET", "/v1/health")
        assert time.monotonic() - started < 1.0

        def freed() -> bool:
            probe, got = hold(daemon, 1)
            probe.kill()
            probe.wait(5)
            return got == [200]

        # the daemon drops a stream whose writes stall for its read timeout (10 s)
        until(freed, 20, "the stalled streams are dropped")
        assert daemon.rss_mb() < 300
    finally:
        holder.kill()
        holder.wait(5)


def test_the_middleware_needs_only_the_read_role(daemon: DaemonProc) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [*NOBODY, sys.executable, "-c", MIDDLEWARE, str(daemon.socket)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["live"] == 1 and stats["generation"] == 1
    assert stats["reporting"] is False
    assert res.stderr.count("lacks the 'report' role") == 1
