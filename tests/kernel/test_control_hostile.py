"""A hostile read-only user against the real daemon's control socket (issue 14, items 1-3):
it cannot kill the daemon by exhausting its descriptors, cannot lock the admin out, and
cannot make the daemon hold large bodies. The attacker runs as `nobody` (setpriv)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab.daemon import DaemonProc
from lab.wait import until

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
"""
SOCKET = '[control]\ngroup = "nogroup"\n'
READ_NOBODY = '[roles]\nread = {users = ["nobody"]}\n'
PYTHON = "/usr/bin/python3"

# The attacker: opens N connections and then, per mode, stays idle ("idle") or starts a
# request with a huge declared body and sends `mb` MiB of it slowly ("body"). Prints one
# JSON line with what it saw, then holds everything until its stdin closes.
ATTACKER = r"""
import json, socket, sys, time
path, n, mode, target, mb = sys.argv[1:]
n, mb = int(n), int(mb)
socks, failed = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        socks.append(s)
    except OSError:
        failed += 1
        s.close()
statuses = []
if mode == "body":
    for s in socks:
        try:
            s.sendall(b"POST " + target.encode() + b" HTTP/1.1\r\nHost: a\r\n"
                      b"Content-Length: 33554432\r\n\r\n")
        except OSError:
            pass
    chunk = b" " * 65536
    for _ in range(mb * 16):
        for s in socks:
            try:
                s.sendall(chunk)
            except OSError:
                pass
        time.sleep(0.005)
    for s in socks:
        try:
            statuses.append(int(s.recv(4096).split()[1]))
        except (OSError, IndexError, ValueError):
            statuses.append(0)
time.sleep(1)
held = 0
for s in socks:
    s.setblocking(False)
    try:
        s.recv(4096)  # an answer or EOF: refused
    except BlockingIOError:
        held += 1
    except OSError:
        pass
seen = {"connected": len(socks), "failed": failed, "held": held, "statuses": statuses}
print(json.dumps(seen), flush=True)
sys.stdin.read()
"""


class LimitedDaemon(DaemonProc):
    """The daemon under a descriptor limit, as a service gets it without LimitNOFILE=."""

    nofile = "1024:1024"

    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", "--", *super().argv()]


class Attacker:
    def __init__(
        self, daemon: DaemonProc, n: int, mode: str = "idle", target: str = "", mb: int = 0
    ):
        argv = [
            "prlimit", "--nofile=4096:4096", "--",
            "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            PYTHON, "-I", "-S", "-c", ATTACKER,
            str(daemon.socket), str(n), mode, target or "-", str(mb),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def report(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        yield name


def timed(daemon: DaemonProc, method: str, path: str, body: Any = None) -> tuple[int, float]:
    start = time.monotonic()
    status, _ = daemon.request(method, path, body)
    return status, time.monotonic() - start


def test_eleven_hundred_idle_connections_of_a_read_user_do_not_kill_the_daemon(
    ns: str, tmp_path: Path
) -> None:
    with LimitedDaemon(ns, tmp_path, POLICY, SOCKET + READ_NOBODY).start() as daemon:
        attacker = Attacker(daemon, 1100)
        try:
            seen = attacker.report()
            answers = [
                timed(daemon, "POST", "/v1/blocks", {"address": "10.77.5.5", "ttl": "1h"}),
                timed(daemon, "POST", "/v1/reload", {}),  # libnftables opens its socket
                timed(daemon, "DELETE", "/v1/blocks/10.77.5.5"),
                timed(daemon, "GET", "/v1/health"),
            ]
            alive = daemon.proc is not None and daemon.proc.poll() is None
        finally:
            attacker.stop()
        assert alive, daemon.output()
        assert [status for status, _ in answers] == [200, 200, 200, 200]
        assert max(took for _, took in answers) < 1.0
        assert seen["connected"] + seen["failed"] == 1100 and seen["connected"] > 1000, seen
        assert seen["held"] == 16  # connections_per_uid
        refusals = [e for e in daemon.audit_events() if e["event"] == "access_denied"]
        assert refusals == []  # a read user's refused connections are not access denials
        assert "Traceback" not in daemon.output()


def test_a_read_user_cannot_fill_the_room_kept_for_the_admin(ns: str, tmp_path: Path) -> None:
    config = (
        SOCKET
        + "max_connections = 64\nconnections_per_uid = 1000\nadmin_connections = 8\n"
        + READ_NOBODY
    )
    with DaemonProc(ns, tmp_path, POLICY, config).start() as daemon:
        attacker = Attacker(daemon, 200)
        try:
            seen = attacker.report()
            admin: list[Any] = []
            try:  # seven of the admin's eight kept places held, a request in the eighth
                for _ in range(7):
                    admin.append(subprocess.Popen(
                        ["python3", "-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX);"
                         "s.connect(sys.argv[1]); print('ok', flush=True); time.sleep(30)",
                         str(daemon.socket)],
                        stdout=subprocess.PIPE, text=True,
                    ))  # fmt: skip
                for p in admin:
                    assert p.stdout is not None and p.stdout.readline().strip() == "ok"
                status, took = timed(daemon, "POST", "/v1/reload", {})
            finally:
                for p in admin:
                    p.kill()
                    p.wait(5)
        finally:
            attacker.stop()
    assert seen["held"] == 64 - 8, seen
    assert status == 200 and took < 1.0


def test_slow_huge_bodies_of_a_read_user_do_not_grow_the_daemon(ns: str, tmp_path: Path) -> None:
    with DaemonProc(ns, tmp_path, POLICY, SOCKET + READ_NOBODY).start() as daemon:
        daemon.ok("GET", "/v1/status")
        before = daemon.rss_mb()
        peaks = []
        for target in ("/v1/blocks", "/v1/evaluate"):
            attacker = Attacker(daemon, 16, "body", target, mb=2)
            try:
                seen = attacker.report()
                peaks.append(daemon.rss_mb())
            finally:
                attacker.stop()
            codes = {"/v1/blocks": 403, "/v1/evaluate": 413}
            assert set(seen["statuses"]) == {codes[target]}, seen
        until(lambda: daemon.ok("GET", "/v1/health"), 5, "the daemon to answer")
    assert max(peaks) - before < 8, (before, peaks)
