"""The fleet with a real nats-server (JetStream, storage in a temporary directory) and real
daemons in their own namespaces, judged by real packets: a block on A drops the client on
B; a management address on B is never blocked by the fleet; an unblock propagates; with
the bus stopped A keeps blocking alone, and when it is back B — restarted meanwhile —
catches up, skipping what expired; C joining late gets the live blocks; a real port scan
against A gets the scanner dropped on B.

Topology: the Lab's server namespace is the hub (nats-server, routing); clients 1-3 are
hosts A, B, C (a daemon each, a listener on 443), client 4 is the attacker, whose packets
the hub routes to every host."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import DaemonProc
from lab.nats import NatsServer, fleet_accounts
from lab.netns import must
from lab.network import Client, Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
settings:
  default_policy: deny
  admin_ports: [22]
  syn_flood_threshold: 100000
  detection_grace: 1s
  scan: {ports: 10, window: 10s}
zones:
  - {name: management, cidrs: [MGMT]}
  - {name: lan, cidrs: [10.77.0.0/16]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
reputation: {threshold: 2, temp_block: 1h}
"""
CONFIG = """\
[control]
group = "nogroup"
[roles]
read = {{users = ["nobody"]}}
[daemon]
drift_check_interval = 0.5
[metrics]
listen = ""
[fleet]
servers = {servers}
name = "lab"
host = "{host}"
share = {share}
user = "{host}"
password = "pw-{host}"
"""
# the server as docs/fleet.md configures it: a user per host, publishing only under its
# own name; a may push the policy
ACCOUNTS = fleet_accounts("lab", {h: f"pw-{h}" for h in "abc"}, admins=("a",))
WEB, ALT = 443, 8443
# an out-of-band publisher (run in the hub with the real client): what the daemons must
# refuse even when it reaches the bucket without `push-policy`'s validation
PUT = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect("nats://127.0.0.1:4222", user=sys.argv[2], password=sys.argv[3])
    if sys.argv[1] == "info":
        si = await nc.jetstream().stream_info("AFW_lab_DECISIONS")
        print(f"replicas={si.config.num_replicas}")
    elif sys.argv[1] == "kv":
        kv = await nc.jetstream().key_value("AFW_lab_POLICY")
        print(await kv.put("policy", sys.stdin.buffer.read()))
    else:
        try:
            print(await nc.jetstream().publish(sys.argv[1], sys.stdin.buffer.read(), timeout=2))
        except Exception as exc:
            print("refused", type(exc).__name__)
    await nc.close()
    await nc.close()
asyncio.run(main())
"""


@dataclass
class Setup:
    lab: Lab
    hub: NatsServer
    tmp: Path
    hosts: dict[str, DaemonProc]
    clients: dict[str, Client]
    attacker: Client
    follow: tuple[str, ...] = ()  # hosts that follow the fleet's policy
    ports: tuple[int, ...] = (4222,)  # of the NATS servers (a cluster has three)
    extra: str = ""  # more [fleet] settings
    threats: bool = False  # share threat events too (and climb the ladder at 3)

    def start(self, name: str) -> DaemonProc:
        c = self.clients[name]
        policy = POLICY.replace("MGMT", "10.77.4.9/32" if name == "b" else "10.77.250.0/24")
        share = '["blocks", "policy"]' if name in self.follow else '["blocks"]'
        if self.threats:
            share = '["blocks", "threats"]'
            policy = policy.replace("threshold: 2", "threshold: 3")
        servers = "[" + ", ".join(f'"nats://{c.server_v4}:{p}"' for p in self.ports) + "]"
        config = CONFIG.format(servers=servers, host=name, share=share) + self.extra
        workdir = self.tmp / name
        workdir.mkdir(exist_ok=True)
        d = self.hosts.get(name) or DaemonProc(c.ns, workdir, policy, config)
        self.hosts[name] = d.start()
        until(lambda: fleet(d)["connected"], 15, f"{name} connected to the bus")
        return d

    def passes(self, name: str, source: str, port: int = WEB) -> bool:
        """A connection gets through (tried a few times: under a loaded machine one may
        take longer than the probe waits; a dropped source never gets through)."""
        for _ in range(3):
            if self.lab.tcp(self.attacker, self.clients[name].v4, port, 1.0, source) == "ok":
                return True
        return False

    def dropped(self, name: str, source: str) -> bool:
        """Host `name` holds a block of `source`, and its packets are dropped."""
        held = block_of(self.hosts[name], source) is not None
        return held and self.web(name, source) == "timeout"

    def web(self, name: str, source: str) -> str:
        """One connection from the attacker (from `source`) to host `name`'s web port."""
        return self.lab.tcp(self.attacker, self.clients[name].v4, WEB, 0.4, source)


def _put(s: Setup, subject: str, user: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Publish with the real client as `user`, from the hub."""
    argv = [sys.executable, "-c", PUT, subject, user, f"pw-{user}"]
    return subprocess.run(
        ["ip", "netns", "exec", s.lab.server, *argv],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )


def _at(text: str) -> float:
    """An RFC 3339 time of the API, as a UNIX time (the expiry is shared to the second:
    block timeouts are whole seconds)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fleet(d: DaemonProc) -> dict[str, Any]:
    f: dict[str, Any] = d.ok("GET", "/v1/fleet")
    return f


def block_of(d: DaemonProc, address: str) -> dict[str, Any] | None:
    blocks = d.ok("GET", "/v1/blocks")["blocks"]
    return next((dict(b) for b in blocks if b["address"] == address), None)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with Lab(clients_wanted=4) as lab:
        a, b, c, x = lab.clients
        must(["ip", "netns", "exec", lab.server, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for host in (a, b, c):
            must(["ip", "-n", host.ns, "route", "add", "10.77.4.0/24", "via", host.server_v4])
            lab.listen([WEB, ALT], ns=host.ns)
        must(["ip", "-n", x.ns, "route", "add", "10.77.0.0/16", "via", x.server_v4])
        for i in range(3, 10):
            lab.add_address(x, f"10.77.4.{i}/24")
        with NatsServer(lab.server, tmp_path, config=ACCOUNTS) as hub:
            s = Setup(lab, hub, tmp_path, {}, {"a": a, "b": b, "c": c}, x)
            try:
                yield s
            finally:
                for d in s.hosts.values():
                    d.cleanup()


def test_blocks_reach_every_host_and_survive_a_partition_a_restart_and_a_late_joiner(
    setup: Setup,
) -> None:
    s = setup
    a, b = s.start("a"), s.start("b")
    assert s.passes("b", "10.77.4.3")
    # a block on A, shared: B drops the client's packets; B shows where it came from
    res = a.cli("block", "10.77.4.3", "--ttl", "10m", "--reason", "scanner", "--fleet")
    assert res.returncode == 0, res.stderr
    until(lambda: s.dropped("b", "10.77.4.3"), 5, "A's block dropping on B")
    blk = block_of(b, "10.77.4.3")
    assert blk is not None and blk["source"] == "fleet" and blk["reason"] == "fleet a: scanner"
    own = block_of(a, "10.77.4.3")
    assert own is not None and 0 <= _at(blk["expires_at"]) - _at(own["expires_at"]) < 1.5
    assert "fleet a" in b.cli("explain", "10.77.4.3").stdout
    # an IPv6 prefix travels too (its subject token keeps the colons and the slash)
    assert a.cli("block", "fd77:0:0:4::/64", "--ttl", "10m", "--fleet").returncode == 0
    until(lambda: block_of(b, "fd77:0:0:4::/64") is not None, 5, "the IPv6 prefix on B")
    # b may not publish under a's name (the server refuses); c's forged origin is dropped
    forged = b'{"v":1,"id":"a.0000000000ff","op":"block","key":"10.77.4.8","origin":"a",'
    forged += b'"at":1700000000,"expires_at":null,"reason":"forged"}'
    res = _put(s, "afw.lab.d.a.10_77_4_8", "b", forged)
    assert res.returncode == 0 and b"refused" in res.stdout, res
    assert b"refused" not in _put(s, "afw.lab.d.c.10_77_4_8", "c", forged).stdout
    until(lambda: fleet(b)["invalid"] == 1, 5, "B dropping c's forged decision")
    assert s.passes("b", "10.77.4.8")
    # B's management address: A blocks it, B never does
    assert a.cli("block", "10.77.4.9", "--ttl", "10m", "--fleet").returncode == 0
    assert s.web("a", "10.77.4.9") == "timeout"
    until(lambda: fleet(b)["skipped"].get("protected"), 5, "B refusing the management block")
    assert s.passes("b", "10.77.4.9")
    skipped = [e for e in b.audit_events() if e["event"] == "fleet_skipped"]
    assert [(e["source_ip"], e["origin"], e["why"]) for e in skipped] == [
        ("10.77.4.9", "a", "protected")
    ]
    # an unblock on A, shared: B lets the client in again
    assert a.cli("unblock", "10.77.4.3", "--fleet").returncode == 0
    until(lambda: s.web("b", "10.77.4.3") == "ok", 5, "A's unblock reaching B")
    # the bus goes away: A keeps blocking alone and queues its decisions
    s.hub.stop()
    until(lambda: not fleet(a)["connected"], 10, "A noticing the bus is gone")
    assert a.cli("block", "10.77.4.5", "--ttl", "10m", "--fleet").returncode == 0
    assert a.cli("block", "10.77.4.6", "--ttl", "2s", "--fleet").returncode == 0
    assert s.web("a", "10.77.4.5") == "timeout"
    assert fleet(a)["backlog"] == 2
    b.stop()  # B restarts during the partition: it comes up and enforces alone
    b.start()
    assert not fleet(b)["connected"] and block_of(b, "10.77.4.9") is None
    until(lambda: block_of(a, "10.77.4.6") is None, 10, "the 2 s block expiring on A")
    s.hub.start()
    until(lambda: fleet(b)["connected"], 20, "B connecting once the bus is back")
    until(lambda: s.dropped("b", "10.77.4.5"), 10, "B catching up after the partition")
    until(lambda: fleet(a)["backlog"] == 0, 5, "A's backlog published")
    assert block_of(b, "10.77.4.6") is None
    assert fleet(b)["skipped"].get("expired") == 1
    # C joins late: the live blocks only (not the lifted one, not the expired one)
    c = s.start("c")
    until(lambda: s.dropped("c", "10.77.4.5"), 10, "C getting the live blocks")
    live = {"10.77.4.5", "10.77.4.9", "fd77:0:0:4::/64"}
    until(lambda: {b["address"] for b in c.ok("GET", "/v1/blocks")["blocks"]} == live, 5, "all")
    assert s.passes("c", "10.77.4.3")
    st = c.ok("GET", "/v1/status")["fleet"]
    assert st["connected"] and st["lag"] == 0 and st["host"] == "c"
    assert "fleet lab as c: connected" in c.cli("status").stdout


def test_a_port_scan_against_one_host_gets_the_scanner_dropped_on_another(setup: Setup) -> None:
    s = setup
    a, b = s.start("a"), s.start("b")
    scanner = "10.77.4.7"
    assert s.passes("b", scanner)
    argv = ["ip", "netns", "exec", s.attacker.ns, "timeout", "30", "nmap", "-n", "-Pn", "-T4"]
    argv += ["--max-retries", "0", "-sT", "-p", "1-200", "-S", scanner, "-e", s.attacker.dev]
    scan = subprocess.Popen(
        [*argv, s.clients["a"].v4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        until(lambda: block_of(a, scanner) is not None, 15, "A blocking the scanner")
    finally:
        scan.kill()
        scan.wait(timeout=10)
    assert block_of(a, scanner)["source"] == "reputation"  # type: ignore[index]
    until(lambda: s.dropped("b", scanner), 5, "the scanner dropped on B")
    blk = block_of(b, scanner)
    assert blk is not None and blk["source"] == "fleet" and blk["reason"].startswith("fleet a:")


def test_a_pushed_policy_is_applied_on_followers_and_an_invalid_one_refused(
    setup: Setup, tmp_path: Path
) -> None:
    s = setup
    s.follow = ("b", "c")
    a, b, c = s.start("a"), s.start("b"), s.start("c")
    assert s.passes("b", "10.77.4.3")
    assert s.lab.tcp(s.attacker, s.clients["b"].v4, ALT, 0.4) == "timeout"
    wider = POLICY.replace("MGMT", "10.77.250.0/24").replace("[443]", f"[443, {ALT}]")
    bad = tmp_path / "bad.yaml"
    bad.write_text(wider.replace("dest_ports: [443", "dest_ports: [70000"))
    res = a.cli("fleet", "push-policy", str(bad))
    assert res.returncode == 3 and "E-PORT-RANGE" in res.stdout, res
    good = tmp_path / "good.yaml"
    good.write_text(wider)
    res = a.cli("fleet", "push-policy", str(good))
    assert res.returncode == 0 and "published revision" in res.stdout, res
    for name in ("b", "c"):
        until(
            lambda n=name: s.lab.tcp(s.attacker, s.clients[n].v4, ALT, 0.4) == "ok",
            10,
            f"{name} applying the fleet policy",
        )
    assert s.lab.tcp(s.attacker, s.clients["a"].v4, ALT, 0.4) == "timeout"  # a follows none
    # as an attacker: a read-only user may look, not push or block; malformed bodies fail
    res = a.cli("fleet", "status", user="nobody")
    assert res.returncode == 0 and "fleet lab as a (shares blocks)" in res.stdout, res
    with tempfile.TemporaryDirectory(prefix="afw-pub-") as pub:  # readable by nobody
        Path(pub).chmod(0o755)
        (Path(pub) / "p.yaml").write_text(wider)
        (Path(pub) / "p.yaml").chmod(0o644)
        for argv in (["fleet", "push-policy", f"{pub}/p.yaml"], ["block", "10.77.4.3", "--fleet"]):
            res = a.cli(*argv, user="nobody")
            assert res.returncode == 1 and "E-FORBIDDEN" in res.stderr, res
    for body in ({"policy": 5}, {"policy": "x", "more": 1}, ["policy"]):
        status, answer = a.request("POST", "/v1/fleet/policy", body)
        assert status == 400 and answer["error"]["code"] in ("E-SCHEMA", "E-JSON"), answer
    revision = fleet(b)["policy"]["revision"]
    assert revision is not None and b.ok("GET", "/v1/status")["generation"] == 2
    # an invalid revision put straight into the bucket: both refuse it and keep theirs
    put = _put(s, "kv", "a", wider.replace("action: allow", "action: maybe").encode())
    assert put.returncode == 0, put.stderr
    for d in (b, c):
        until(lambda d=d: fleet(d)["policy"]["last_result"] == "rejected", 10, "refusal")
        f = fleet(d)["policy"]
        assert f["revision"] == revision and f["errors"][0]["code"] == "E-ENUM"
        assert d.ok("GET", "/v1/status")["generation"] == 2
    assert s.passes("c", "10.77.4.2", ALT)


def _cluster(lab: Lab, tmp: Path, i: int) -> NatsServer:
    routes = ", ".join(f'"nats://127.0.0.1:{6222 + j}"' for j in range(3) if j != i)
    config = (
        f"cluster {{\n  name: afw\n  listen: 127.0.0.1:{6222 + i}\n  routes: [{routes}]\n}}\n"
        + ACCOUNTS
    )
    return NatsServer(lab.server, tmp / f"n{i}", 4222 + i, config, name=f"n{i}")


def test_a_three_node_cluster_losing_a_node_loses_no_decision(tmp_path: Path) -> None:
    with Lab(clients_wanted=4) as lab:
        a, b, c, x = lab.clients
        must(["ip", "netns", "exec", lab.server, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for host in (a, b, c):
            must(["ip", "-n", host.ns, "route", "add", "10.77.4.0/24", "via", host.server_v4])
            lab.listen([WEB], ns=host.ns)
        must(["ip", "-n", x.ns, "route", "add", "10.77.0.0/16", "via", x.server_v4])
        lab.add_address(x, "10.77.4.3/24")
        lab.add_address(x, "10.77.4.4/24")
        nodes = [_cluster(lab, tmp_path, i) for i in range(3)]
        s = Setup(lab, nodes[0], tmp_path, {}, {"a": a, "b": b, "c": c}, x)
        s.ports, s.extra = (4222, 4223, 4224), "replicas = 3\n"
        try:
            for node in nodes:
                node.start()
            a_d, _ = s.start("a"), s.start("b")
            info = _put(s, "info", "a", b"").stdout
            assert b"replicas=3" in info, info  # the stream lives on every node
            assert a_d.cli("block", "10.77.4.3", "--ttl", "10m", "--fleet").returncode == 0
            until(lambda: s.dropped("b", "10.77.4.3"), 10, "the first block on B")
            nodes[0].stop()  # a node dies: a majority of the replicas remains
            assert a_d.cli("block", "10.77.4.4", "--ttl", "10m", "--fleet").returncode == 0
            until(lambda: s.dropped("b", "10.77.4.4"), 20, "the second block on B")
            until(lambda: fleet(a_d)["backlog"] == 0, 10, "A's backlog published")
            c_d = s.start("c")  # and a host joining now gets both
            until(lambda: s.dropped("c", "10.77.4.4"), 20, "C getting the blocks")
            assert {blk["address"] for blk in c_d.ok("GET", "/v1/blocks")["blocks"]} == {
                "10.77.4.3",
                "10.77.4.4",
            }
        finally:
            for d in s.hosts.values():
                d.cleanup()
            for node in nodes:
                node.stop(signal.SIGKILL)


def test_three_low_threat_events_on_three_hosts_block_on_each(setup: Setup) -> None:
    s = setup
    s.threats = True
    hosts = [s.start(name) for name in "abc"]
    source = "10.77.4.8"
    event = {"type": "SENTRY_PORT_SCAN", "source_ip": source, "severity": "low"}
    assert hosts[0].post("/v1/threats", event)["blocked"] == []
    until(lambda: fleet(hosts[2])["applied"] >= 1, 10, "C taking A's event")
    assert block_of(hosts[2], source) is None  # one event is not enough anywhere
    hosts[1].post("/v1/threats", event)
    hosts[2].post("/v1/threats", event)  # three events in the fleet: over 3 on every host
    for name, d in zip("abc", hosts, strict=True):
        until(lambda d=d: block_of(d, source) is not None, 10, f"{name} blocking")
        until(lambda n=name: s.dropped(n, source), 5, f"{name} dropping")
