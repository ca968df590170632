"""Detection with real attackers against the real daemon: nmap scans (SYN and connect, IPv4
and IPv6) are blocked, an hping3 SYN flood is blocked while an allowed client keeps
working, connections beyond the per-source limit are refused by the kernel and climb the
reputation ladder, and conntrack accounting stays correct through an event flood."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.nft import Nft
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

LIMIT = 20
POLICY = f"""\
version: 1
settings:
  default_policy: deny
  admin_ports: [22]
  max_connections_per_ip: {LIMIT}
  syn_flood_threshold: 300
  detection_grace: 1s
  scan: {{ports: 10, window: 10s}}
zones:
  - {{name: lan, cidrs: [10.77.0.0/16, "fd77::/16"]}}
rules:
  - {{name: ssh, dest_ports: [22], protocol: tcp, action: allow}}
  - {{name: web, dest_ports: [443], protocol: tcp, action: allow}}
  - {{name: dns, dest_ports: [5353], protocol: udp, action: allow}}
  - {{name: secrets, dest_ports: [8111], action: reject}}
reputation:
  threshold: 2
  temp_block: 1h
"""
CONFIG = "[daemon]\nconntrack_resync_interval = 2\n"

HOLD = r"""
import socket, sys, time
addr, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
held, ok, refused = [], 0, 0
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((addr, port)); held.append(s); ok += 1
    except OSError:
        refused += 1; s.close()
print(ok, refused, flush=True)
time.sleep(secs)
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Lab, DaemonProc]]:
    with Lab(clients_wanted=2) as lab:
        lab.listen([22, 443, 8111], udp=[5353], hold=[22])
        d = DaemonProc(lab.server, tmp_path, POLICY, CONFIG).start()
        try:
            yield lab, d
        finally:
            d.cleanup()


def _blocked(d: DaemonProc, address: str) -> dict[str, Any] | None:
    for blk in d.ok("GET", "/v1/blocks")["blocks"]:
        if blk["address"] in (address, f"{address}/64") or address.startswith(
            blk["address"].split("/")[0].rstrip(":")
        ):
            return dict(blk)
    return None


def _nmap(lab: Lab, ns: str, *args: str) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", ns, "timeout", "30", "nmap", "-n", "-Pn", "-T4"]
    argv += ["--max-retries", "0", *args]
    # a session of its own: nmap is timeout's child, and the whole group is killed at the end
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _scan_is_blocked(lab: Lab, d: DaemonProc, scan: list[str], v6: bool = False) -> None:
    scanner, quiet = lab.clients
    target = scanner.server_v6 if v6 else scanner.server_v4
    source = scanner.v6 if v6 else scanner.v4
    assert lab.tcp(scanner, target, 443) == "ok"
    started = time.monotonic()
    proc = _nmap(lab, scanner.ns, *scan, "-p", "1-1000", *(["-6"] if v6 else []), target)
    try:
        until(lambda: _blocked(d, source) is not None, 2, f"{source} blocked by its scan")
        took = time.monotonic() - started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    blk = _blocked(d, source)
    assert blk is not None and "PORT_SCAN" in blk["reason"], blk
    set_name = "block_v6" if v6 else "block_v4"
    assert blk["set"].startswith(set_name)
    assert lab.tcp(scanner, target, 443, timeout=0.5) == "timeout"  # even an allowed port
    quiet_target = quiet.server_v6 if v6 else quiet.server_v4
    assert lab.tcp(quiet, quiet_target, 443) == "ok"
    st = d.ok("GET", "/v1/status")
    assert st["detection"]["port_scans"] >= 1
    assert st["reputation"]["threat_events"]["PORT_SCAN"] >= 1
    print(f"scan blocked after {took:.2f} s")


def test_syn_scan_from_real_nmap_is_blocked_within_two_seconds(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    _scan_is_blocked(lab, d, ["-sS"])
    denied = [e for e in d.audit_events() if e["event"] == "decision"]
    assert denied and denied[0]["rule_name"] is None and denied[0]["kind"] == "denied"
    assert denied[0]["reason"] == "no rule matched; default policy deny"


def test_connect_scan_is_blocked(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    _scan_is_blocked(lab, d, ["-sT"])


def test_ipv6_scan_is_blocked(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    _scan_is_blocked(lab, d, ["-sS"], v6=True)


def test_hping3_syn_flood_is_blocked_while_an_allowed_client_keeps_working(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    flooder, quiet = lab.clients
    argv = ["ip", "netns", "exec", flooder.ns, "timeout", "3", "hping3", "-S", "--flood"]
    argv += ["-c", "500000", "-p", "443", flooder.server_v4]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # the flood is under way
        during = lab.probe(quiet, quiet.server_v4, 443, count=20, timeout=1.0)
        until(lambda: _blocked(d, flooder.v4) is not None, 6, "the flooder blocked")
    finally:
        proc.wait(timeout=10)
    assert during.count("ok") >= 18, during
    blk = _blocked(d, flooder.v4)
    assert blk is not None and "SYN_FLOOD" in blk["reason"], blk
    assert lab.tcp(quiet, quiet.server_v4, 443) == "ok"
    st = d.ok("GET", "/v1/status")
    assert st["detection"]["syn_floods"] >= 1


def _hold(
    lab: Lab, ns: str, addr: str, n: int, secs: float
) -> tuple[subprocess.Popen[str], int, int]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", HOLD, addr, "22", str(n), str(secs)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ok, refused = map(int, proc.stdout.readline().split())
    return proc, ok, refused


@pytest.mark.parametrize("family", [4, 6])
def test_connections_beyond_the_limit_are_refused_and_climb_the_ladder(
    setup: tuple[Lab, DaemonProc], family: int
) -> None:
    lab, d = setup
    client = lab.clients[0]
    addr = client.server_v4 if family == 4 else client.server_v6
    source = client.v4 if family == 4 else client.v6
    proc, ok, refused = _hold(lab, client.ns, addr, LIMIT + 5, 4)
    try:
        assert (ok, refused) == (LIMIT, 5)
        until(
            lambda: (
                d.ok("GET", "/v1/status")["reputation"]["threat_events"].get("CONNTRACK_LIMIT", 0)
                >= 1
            ),
            6,
            "a CONNTRACK_LIMIT threat event",
        )
        st = d.ok("GET", "/v1/status")
        assert st["conntrack"]["max_per_source"] >= LIMIT
        assert _blocked(d, source) is None  # medium severity: one step up the ladder
    finally:
        proc.kill()
        proc.wait()
    proc, ok, refused = _hold(lab, client.ns, addr, LIMIT + 5, 4)  # a repeat offender
    try:
        until(lambda: _blocked(d, source) is not None, 6, "the repeat offender blocked")
    finally:
        proc.kill()
        proc.wait()
    assert "CONNTRACK_LIMIT" in (_blocked(d, source) or {})["reason"]


FLOOD = r"""
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (addr, 5353)); s.close()
"""


def test_conntrack_counts_are_correct_after_an_event_flood(tmp_path: Path) -> None:
    policy = POLICY.replace(f"max_connections_per_ip: {LIMIT}", "max_connections_per_ip: 0")
    with Lab(clients_wanted=2) as lab:
        lab.listen([443], udp=[5353])
        d = DaemonProc(lab.server, tmp_path, policy, CONFIG).start()
        try:
            _event_flood(lab, d, lab.clients[1])
        finally:
            d.cleanup()


def _event_flood(lab: Lab, d: DaemonProc, client: Any) -> None:
    before = d.ok("GET", "/v1/status")["conntrack"]
    res = lab.exec(client.ns, [sys.executable, "-c", FLOOD, client.server_v4, "5000"], 60)
    assert res.returncode == 0, res.stderr

    def kernel_count() -> int:
        out = lab.exec(lab.server, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
        return int(out.stdout)

    kernel = kernel_count()
    assert kernel >= 4000  # a few of the 5,000 ephemeral source ports repeat
    until(lambda: d.ok("GET", "/v1/status")["conntrack"]["events"] >= kernel - 5, 10, "events")
    resyncs = d.ok("GET", "/v1/status")["conntrack"]["resyncs"]
    until(lambda: d.ok("GET", "/v1/status")["conntrack"]["resyncs"] > resyncs, 10, "a resync")
    st = d.ok("GET", "/v1/status")["conntrack"]
    assert abs(st["entries"] - kernel_count()) <= 5, (st, kernel_count())
    assert st["entries"] > before["entries"]
    assert dict(st["top_sources"])[client.v4] >= kernel - 10


def test_a_changed_limit_takes_effect_at_reload_with_fresh_meters(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    client = lab.clients[1]
    d.policy.write_text(
        POLICY.replace(f"max_connections_per_ip: {LIMIT}", "max_connections_per_ip: 5")
    )
    assert d.ok("POST", "/v1/reload", {})["result"] == "applied"
    with inside(lab.server):
        sets = set(Nft().observe().sets)
    assert {"connlimit_v4_5", "connlimit_v6_5"} <= sets
    assert not {f"connlimit_v4_{LIMIT}", f"connlimit_v6_{LIMIT}"} & sets
    proc, ok, refused = _hold(lab, client.ns, client.server_v4, 8, 1)
    proc.kill()
    proc.wait()
    assert (ok, refused) == (5, 3)
