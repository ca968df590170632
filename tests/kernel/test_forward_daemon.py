"""The real daemon on a Docker-shaped host: per-source rate and connection limits hold on
published ports (v4 and v6), a scan of published ports blocks the scanner, reloads keep the forward
path without interrupting established container traffic, and drift of the forward chain
is repaired."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.nft import Nft
from lab.containers import DockerHost
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Client, Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
settings:
  default_policy: deny
  syn_flood_threshold: 100000
  max_connections_per_ip: 3
  scan: {ports: 8, window: 10s}
zones:
  - {name: docker, cidrs: [172.17.0.0/16, "fd77:0:0:17::/64"]}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow, applies_to: host}
  - {name: web, dest_ports: [8080, 8094], protocol: tcp, action: allow}
  - {name: limited, dest_ports: [8081], protocol: tcp, action: allow, rate_limit_rps: 1,
     burst: 2}
"""
SCAN_PORTS = range(8082, 8094)  # published to the web container's ports 1082-1093


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerHost]:
    with Lab(clients_wanted=4) as lab:
        host = DockerHost(lab).setup(containers=2)
        try:
            web, other = host.containers
            host.publish(web, 8080, 80)
            host.publish(other, 8081, 80)
            host.publish(web, 8094, 7)
            for port in SCAN_PORTS:
                host.publish(web, port, port - 7000)
            host.listen(web.ns, [80], hold=[80])
            host.listen(other.ns, [80])
            host.echo(web.ns, 7)
            yield host
        finally:
            host.close()


@pytest.fixture
def daemon(docker: DockerHost, tmp_path: Path) -> Iterator[DaemonProc]:
    with inside(docker.host):
        Nft().delete_table()  # each test starts from a fresh table and no bans
    d = DaemonProc(docker.host, tmp_path, POLICY).start()
    try:
        yield d
    finally:
        d.cleanup()


def _server(client: Client, fam: int) -> str:
    return client.server_v4 if fam == 4 else client.server_v6


@pytest.mark.parametrize("fam", [4, 6])
def test_rate_limit_holds_on_a_published_port(
    docker: DockerHost, daemon: DaemonProc, fam: int
) -> None:
    c = docker.lab.clients[0]
    got = docker.probe(c.ns, _server(c, fam), 8081, count=8, timeout=0.3)
    assert 1 <= got.count("ok") <= 4 and got.count("timeout") >= 4, got
    other = docker.lab.clients[3]  # per source: another client still gets its burst
    assert docker.tcp(other.ns, _server(other, fam), 8081) == "ok"


@pytest.mark.parametrize("fam", [4, 6])
def test_connection_limit_holds_on_a_published_port(
    docker: DockerHost, daemon: DaemonProc, fam: int
) -> None:
    c = docker.lab.clients[1]
    for _ in range(3):
        docker.lab.hold_connection(c, _server(c, fam), 8080, seconds=30)
    assert docker.tcp(c.ns, _server(c, fam), 8080) == "refused"  # beyond 3: reset
    other = docker.lab.clients[3]
    assert docker.tcp(other.ns, _server(other, fam), 8080) == "ok"
    # the refusals are reported for the published port (nft/fwdlog.py)
    source = c.v4 if fam == 4 else c.v6
    until(
        lambda: any(
            e["event"] == "decision" and e["kind"] == "connlimit" and e["source_ip"] == source
            for e in daemon.audit_events()
        ),
        5,
        "the refusal's decision line",
    )
    (line, *_) = [
        e
        for e in daemon.audit_events()
        if e["event"] == "decision" and e["kind"] == "connlimit" and e["source_ip"] == source
    ]
    assert (line["direction"], line["dest_port"]) == ("forward", 8080)


def scan_blocks_the_scanner(
    docker: DockerHost, daemon: DaemonProc, scanner: Client, bystander: Client, ports: range
) -> None:
    """The scanner's SYNs to `ports` (published, unanswered) get it blocked within 5 s: its
    published web port times out afterwards, the bystander's still answers."""
    for port in ports:
        assert docker.tcp(scanner.ns, scanner.server_v4, port, timeout=0.2) == "timeout"

    def blocked() -> bool:
        blocks = daemon.ok("GET", "/v1/blocks")["blocks"]
        return any(b["address"] == scanner.v4 for b in blocks)

    until(blocked, 5, "the scanner blocked")
    assert docker.tcp(scanner.ns, scanner.server_v4, 8080, timeout=0.5) == "timeout"
    assert docker.tcp(bystander.ns, bystander.server_v4, 8080) == "ok"


def test_port_scan_of_published_ports_blocks_the_scanner(
    docker: DockerHost, daemon: DaemonProc
) -> None:
    scanner, bystander = docker.lab.clients[2], docker.lab.clients[3]
    assert docker.tcp(scanner.ns, scanner.server_v4, 8080) == "ok"
    scan_blocks_the_scanner(docker, daemon, scanner, bystander, SCAN_PORTS)
    assert any(
        e["event"] == "blocked" and e.get("source_ip") == scanner.v4 for e in daemon.audit_events()
    ), daemon.audit_events()[-3:]


def test_reload_keeps_forward_rules_and_established_container_traffic(
    docker: DockerHost, daemon: DaemonProc
) -> None:
    c = docker.lab.clients[3]
    with inside(c.ns):
        conn = socket.create_connection((c.server_v4, 8094), timeout=3)
    with conn:
        conn.sendall(b"before")
        assert conn.recv(64) == b"before"
        daemon.policy.write_text(
            POLICY + "  - {name: more, dest_ports: [8093], protocol: tcp, action: allow}\n"
        )
        until(lambda: daemon.ok("GET", "/v1/health")["generation"] == 2, 5, "reloaded")
        conn.sendall(b"after")
        assert conn.recv(64) == b"after"
    assert docker.tcp(c.ns, c.server_v4, 8093) == "refused"  # open now: no listener behind
    assert docker.tcp(c.ns, c.server_v4, 8092, timeout=0.3) == "timeout"
    assert docker.tcp(c.ns, c.server_v4, 8080) == "ok"


def test_drift_of_the_forward_chain_is_repaired(docker: DockerHost, daemon: DaemonProc) -> None:
    c = docker.lab.clients[3]
    with inside(docker.host):
        chain = {"family": "inet", "table": "aitherfwd", "name": "forward"}
        Nft().run([{"flush": {"chain": chain}}])
    until(lambda: daemon.ok("GET", "/v1/status")["drift_repairs"] >= 1, 10, "repair counted")
    with inside(docker.host):
        rules = [r for r in Nft().list_table() if r.get("rule", {}).get("chain") == "forward"]
    assert len(rules) >= 7
    assert docker.tcp(c.ns, c.server_v4, 8091, timeout=0.3) == "timeout"
    assert docker.tcp(c.ns, c.server_v4, 8080) == "ok"
