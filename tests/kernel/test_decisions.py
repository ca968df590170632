"""Decisions on the record and the seed's settings, with real packets (issue 21): a denied
probe writes exactly the expected OCSF decision line, an allowed connection under
`log_allowed` another, a flood stays within the per-rule sample rate; outbound is dropped
by the kernel when `egress_default_policy: deny` has no `egress:` section, as evaluate
says; `connection_idle_timeout` is the conntrack timeout of established TCP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.auditfiles import DECISION_STABLE
from lab.daemon import DaemonProc
from lab.network import Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

RATE = 5
POLICY = f"""\
settings:
  default_policy: deny
  admin_ports: [22]
  log_allowed: true
  audit_decisions: {RATE}
  egress_default_policy: deny
  connection_idle_timeout: 120
  scan: {{ports: 50, window: 10s}}
  syn_flood_threshold: 0  # the flood test's 300 SYNs in ~3 s must not end in a SYN_FLOOD block
zones:
  - {{name: lan, cidrs: [10.77.0.0/16, "fd77::/16"]}}
services:
  - {{name: Secrets, port: 8111}}
rules:
  - {{name: ssh, dest_ports: [22], protocol: tcp, action: allow}}
  - {{name: web, dest_ports: [443], protocol: tcp, action: allow}}
  - {{name: no_secrets, dest_services: [Secrets], action: deny}}
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Lab, DaemonProc]]:
    with Lab(clients_wanted=1) as lab:
        lab.listen([22, 443, 8111], hold=[22])
        d = DaemonProc(lab.server, tmp_path, POLICY).start()
        try:
            yield lab, d
        finally:
            d.cleanup()


def test_a_denied_probe_writes_exactly_the_expected_ocsf_decision_line(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    (c,) = lab.clients
    assert lab.tcp(c, c.server_v4, 8111, timeout=0.5) == "timeout"
    until(lambda: d.decisions(rule_name="no_secrets"), 5, "the denial's decision line")
    (line,) = d.decisions(rule_name="no_secrets")
    assert {k: line[k] for k in DECISION_STABLE} == {
        "event": "decision",
        "action": "denied",
        "verdict": "deny",
        "rule_name": "no_secrets",
        "zone": "lan",
        "source_ip": c.v4,
        "dest_service": "Secrets",
        "reason": "rule 'no_secrets' denies tcp/8111 from zone lan",
        "latency_us": None,
        "dest_ip": c.server_v4,
        "dest_port": 8111,
        "protocol": "tcp",
        "direction": "inbound",
        "kind": "denied",
        "origin": "kernel",
        "class_uid": 4001,
        "category_uid": 4,
        "activity_id": 5,
        "type_uid": 400105,
        "severity_id": 2,
        "action_id": 2,
        "disposition": "Blocked",
        "disposition_id": 2,
        "connection_info": {"protocol_name": "tcp", "direction": "Inbound", "direction_id": 1},
    }
    assert line["src_endpoint"]["ip"] == c.v4 and line["src_endpoint"]["port"] > 0
    assert line["dst_endpoint"] == {"ip": c.server_v4, "port": 8111}

    # an allowed connection under log_allowed, and a default drop (no rule)
    assert lab.tcp(c, c.server_v4, 443) == "ok"
    assert lab.tcp(c, c.server_v6, 9999, timeout=0.5) == "timeout"
    until(lambda: d.decisions(rule_name="web"), 5, "the allowed connection's line")
    until(lambda: d.decisions(dest_port=9999), 5, "the default drop's line")
    (allowed,) = d.decisions(rule_name="web")
    assert (allowed["action"], allowed["verdict"], allowed["disposition"]) == (
        "allowed",
        "allow",
        "Allowed",
    )
    (default,) = d.decisions(dest_port=9999)
    assert default["rule_name"] is None and default["source_ip"] == c.v6
    assert default["reason"] == "no rule matched; default policy deny"

    # what evaluate answers for the same probe, recorded on request, agrees with the kernel
    res = d.cli("evaluate", "--source", c.v4, "--port", "8111", "--audit")
    assert res.returncode == 0 and res.stdout.startswith("deny  rule=no_secrets"), res
    (asked,) = d.decisions(origin="evaluate")
    same = ("verdict", "rule_name", "zone", "source_ip", "dest_service", "reason")
    assert {k: asked[k] for k in same} == {k: line[k] for k in same}
    assert asked["latency_us"] > 0 and asked["kind"] == "evaluate"


def test_a_flood_against_one_rule_stays_within_its_sample_rate(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    (c,) = lab.clients
    results = lab.probe(c, c.server_v4, 8111, count=300, timeout=0.01)
    assert set(results) == {"timeout"}
    reports = lambda: d.ok("GET", "/v1/status")["detection"]["denials"]  # noqa: E731
    until(lambda: reports() >= 300, 10, "the kernel's 300 reports")
    lines = d.decisions(rule_name="no_secrets")
    # 300 denials in about 3 s: the bucket's burst, then RATE a second
    assert RATE <= len(lines) <= RATE * 6, len(lines)
    assert lab.tcp(c, c.server_v4, 443) == "ok"  # another rule's decisions still get in
    until(lambda: d.decisions(rule_name="web"), 5, "the other rule's line")


CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("ok")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""


def test_egress_default_deny_without_an_egress_section_drops_outbound_as_evaluate_says(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, d = setup
    (c,) = lab.clients
    answer = d.post(
        "/v1/evaluate",
        {"direction": "outbound", "dest_ip": c.v4, "dest_port": 80, "expect": "denied"},
    )
    assert answer["verdict"] == "deny" and answer["expected"] is True
    # nothing listens on the client: unfiltered, the connect would be refused at once
    out = lab.exec(lab.server, [sys.executable, "-c", CONNECT, c.v4, "80"]).stdout.strip()
    assert out == "timeout"
    until(lambda: d.decisions(direction="outbound", dest_ip=c.v4), 5, "the outbound decision")
    (line,) = d.decisions(direction="outbound", dest_ip=c.v4)[:1]
    assert line["verdict"] == "deny" and line["connection_info"]["direction_id"] == 2
    # replies to inbound connections still leave (established)
    assert lab.tcp(c, c.server_v4, 443) == "ok"


def test_connection_idle_timeout_is_the_conntrack_timeout_of_established_tcp(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, _ = setup
    (c,) = lab.clients
    lab.hold_connection(c, c.server_v4, 22, seconds=30)

    def established_timeouts() -> list[int]:
        res = lab.exec(lab.server, ["conntrack", "-L", "-p", "tcp", "--dport", "22"])
        return [
            int(line.split()[2])
            for line in res.stdout.splitlines()
            if "ESTABLISHED" in line and line.split()[2].isdigit()
        ]

    until(established_timeouts, 5, "the held connection in conntrack")
    assert all(t <= 120 for t in established_timeouts()), established_timeouts()


NFLOG77 = r"""
import sys, time
from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters.nflog import NFULA_PREFIX, NflogReader
r = NflogReader(77)
print("bound", flush=True)
deadline, seen = time.monotonic() + float(sys.argv[1]), set()
while time.monotonic() < deadline and len(seen) < 2:
    try:
        data = r.sock.recv(1 << 17)
    except BlockingIOError:
        time.sleep(0.05)
        continue
    for msg in nl.messages(data):
        for kind, value in msg.attrs():
            if kind == NFULA_PREFIX:
                seen.add(value.rstrip(b"\0").decode())
print(sorted(seen), flush=True)
"""


def test_log_denied_logs_rule_denials_to_nflog_group_77_as_well_as_default_drops(
    setup: tuple[Lab, DaemonProc],
) -> None:
    lab, _ = setup
    (c,) = lab.clients
    reader = subprocess.Popen(
        netns.exec_argv(lab.server, [sys.executable, "-c", NFLOG77, "10"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "bound"
        assert lab.tcp(c, c.server_v4, 8111, timeout=0.3) == "timeout"  # rule no_secrets
        assert lab.tcp(c, c.server_v4, 9999, timeout=0.3) == "timeout"  # the default
        out, _ = reader.communicate(timeout=20)
    finally:
        reader.kill()
    assert "afw deny no_secrets " in out and "afw deny default " in out, out
