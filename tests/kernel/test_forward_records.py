"""The forward path reports and filters like the input path, with the real daemon and real
packets through a Docker-shaped host (issue 16): a denied connection to a published port
is exactly the expected OCSF decision line (direction `forward`, the published port, the
container's address), so are a default drop, a `log_allowed` accept and a container's
refused egress; a scan of
published ports that all map to ONE container port blocks the scanner; blocked countries,
deny lists, list zones, `source_countries` and `source_lists` hold on published ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.nft import Nft
from lab.auditfiles import DECISION_STABLE
from lab.containers import ContainerNs, DockerHost
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.geodata import write_db
from tests.kernel.test_forward_daemon import scan_blocks_the_scanner

pytestmark = pytest.mark.kernel

ZONES = """\
zones:
  - {name: docker, cidrs: [172.17.0.0/16, "fd77:0:0:17::/64"]}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
"""
POLICY = (
    """\
version: 1
settings:
  default_policy: deny
  log_allowed: true
  syn_flood_threshold: 100000
  scan: {ports: 8, window: 10s}
services:
  - {name: Secrets, port: 8111}
"""
    + ZONES
    + """\
rules:
  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}
  - {name: no_secrets, dest_services: [Secrets], action: deny}
"""
)
SCAN_PORTS = range(8082, 8090)  # eight published ports, all to the web container's port 80


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerHost]:
    with Lab(clients_wanted=3) as lab:
        host = DockerHost(lab).setup(containers=1)
        try:
            (web,) = host.containers
            host.publish(web, 8080, 80)
            host.publish(web, 8111, 9111)  # the record names 8111, never 9111
            for port in (*SCAN_PORTS, 8443, 9443, 9999):
                host.publish(web, port, 80)
            host.listen(web.ns, [80, 9111])
            yield host
        finally:
            host.close()


def _daemon(docker: DockerHost, tmp: Path, policy: str) -> DaemonProc:
    with inside(docker.host):
        Nft().delete_table()  # each test starts from a fresh table and no bans
    return DaemonProc(docker.host, tmp, policy).start()


@pytest.fixture
def daemon(docker: DockerHost, tmp_path: Path) -> Iterator[DaemonProc]:
    d = _daemon(docker, tmp_path, POLICY)
    try:
        yield d
    finally:
        d.cleanup()


def _web(docker: DockerHost) -> ContainerNs:
    return docker.containers[0]


def test_a_denied_published_port_writes_exactly_the_expected_ocsf_decision_line(
    docker: DockerHost, daemon: DaemonProc
) -> None:
    c, web = docker.lab.clients[0], _web(docker)
    assert docker.tcp(c.ns, c.server_v4, 8111, timeout=0.5) == "timeout"
    until(lambda: daemon.decisions(rule_name="no_secrets"), 5, "the denial's decision line")
    (line,) = daemon.decisions(rule_name="no_secrets")
    assert {k: line[k] for k in DECISION_STABLE} == {
        "event": "decision",
        "action": "denied",
        "verdict": "deny",
        "rule_name": "no_secrets",
        "zone": "world",
        "source_ip": c.v4,
        "dest_service": "Secrets",
        "reason": "rule 'no_secrets' denies tcp/8111 from zone world",
        "latency_us": None,
        "dest_ip": web.v4,
        "dest_port": 8111,
        "protocol": "tcp",
        "direction": "forward",
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
        "connection_info": {"protocol_name": "tcp", "direction": "Forward", "direction_id": 3},
    }
    assert line["src_endpoint"]["ip"] == c.v4 and line["src_endpoint"]["port"] > 0
    assert line["dst_endpoint"] == {"ip": web.v4, "port": 8111}

    # a default drop (v6) and an allowed connection: the published ports, not port 80
    assert docker.tcp(c.ns, c.server_v6, 8443, timeout=0.5) == "timeout"
    assert docker.tcp(c.ns, c.server_v4, 8080) == "ok"
    until(lambda: daemon.decisions(dest_port=8443), 5, "the default drop's line")
    until(lambda: daemon.decisions(rule_name="web"), 5, "the allowed connection's line")
    (default,) = daemon.decisions(dest_port=8443)
    assert (default["rule_name"], default["source_ip"], default["dest_ip"]) == (None, c.v6, web.v6)
    assert default["reason"] == "no rule matched; default policy deny"
    assert default["direction"] == "forward"
    (allowed,) = daemon.decisions(rule_name="web")
    assert (allowed["verdict"], allowed["dest_port"], allowed["dest_ip"]) == ("allow", 8080, web.v4)
    assert allowed["direction"] == "forward"
    assert not daemon.decisions(dest_port=80)
    # the connection the daemon logged kept working: the container answered on port 80
    assert docker.tcp(c.ns, c.server_v4, 8080) == "ok"


def test_scan_of_published_ports_mapped_to_one_container_port_blocks_the_scanner(
    docker: DockerHost, daemon: DaemonProc
) -> None:
    scanner, bystander = docker.lab.clients[1], docker.lab.clients[2]
    # eight published ports, one container port behind them all
    scan_blocks_the_scanner(docker, daemon, scanner, bystander, SCAN_PORTS)


GEO_POLICY = """\
version: 1
settings: {{default_policy: deny, syn_flood_threshold: 100000}}
geoip: {{database: {db}, block_countries: [RU]}}
lists:
  - {{name: drop, path: {drop}, action: deny}}
  - {{name: cdn, path: {cdn}}}
zones:
  - {{name: docker, cidrs: [172.17.0.0/16, "fd77:0:0:17::/64"]}}
  - {{name: cloud, list: cdn}}
  - {{name: world, cidrs: [0.0.0.0/0, "::/0"]}}
rules:
  - {{name: web, dest_ports: [8080], protocol: tcp, action: allow}}
  - {{name: fr_only, dest_ports: [8443], protocol: tcp, source_countries: [FR], action: allow}}
  - {{name: cloud_only, zone: cloud, dest_ports: [9999], protocol: tcp, action: allow}}
  - {{name: cdn_only, dest_ports: [9443], protocol: tcp, source_lists: [cdn], action: allow}}
"""
COUNTRIES = {
    "FR": ["10.77.1.0/24", "fd77:0:0:1::/64"],
    "RU": ["10.77.2.0/24", "fd77:0:0:2::/64"],
    "DE": ["10.77.3.0/24", "fd77:0:0:3::/64"],
}


def test_countries_lists_and_list_zones_hold_on_published_ports(
    docker: DockerHost, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {"db": src / "country.mmdb", "drop": src / "drop.txt", "cdn": src / "cdn.txt"}
    write_db(files["db"], COUNTRIES)
    files["drop"].write_text("fd77:0:0:3::/64\n")  # DE's IPv6 range is on a deny list
    files["cdn"].write_text("10.77.3.0/24\n")  # DE's IPv4 range is the CDN
    policy = GEO_POLICY.format(**{k: str(v) for k, v in files.items()})
    (tmp_path / "d").mkdir()
    d = _daemon(docker, tmp_path / "d", policy)
    try:
        until(
            lambda: d.ok("GET", "/v1/status")["geo"]["sets"].get("geo_blocked_v4") == 1,
            20,
            "geo sets filled",
        )
        fr, ru, de = docker.lab.clients
        web = _web(docker)
        expected = [  # (client, family, published port, outcome)
            (fr, 4, 8080, "ok"),
            (fr, 6, 8080, "ok"),
            (ru, 4, 8080, "timeout"),  # blocked country, before the rule that opens 8080
            (ru, 6, 8080, "timeout"),
            (de, 4, 8080, "ok"),
            (de, 6, 8080, "timeout"),  # deny list
            (fr, 4, 8443, "ok"),  # source_countries: FR only
            (de, 4, 8443, "timeout"),
            (de, 4, 9999, "ok"),  # the list zone `cloud`
            (fr, 4, 9999, "timeout"),
            (de, 4, 9443, "ok"),  # source_lists: the CDN only
            (fr, 4, 9443, "timeout"),
        ]
        for client, fam, port, outcome in expected:
            addr = client.server_v4 if fam == 4 else client.server_v6
            got = docker.tcp(client.ns, addr, port, timeout=0.5)
            assert got == outcome, (client.v4, fam, port, got)
            answer = d.post(
                "/v1/evaluate",
                {
                    "source_ip": client.v4 if fam == 4 else client.v6,
                    "protocol": "tcp",
                    "dest_port": port,
                    "direction": "forward",
                    "dest_ip": web.v4 if fam == 4 else web.v6,
                },
            )
            assert (answer["verdict"] == "allow") == (outcome == "ok"), (client.v4, port, answer)
    finally:
        d.cleanup()


def test_a_containers_refused_egress_is_a_forward_decision_line(
    docker: DockerHost, tmp_path: Path
) -> None:
    policy = POLICY.replace(
        "default_policy: deny\n", "default_policy: deny\n  egress_default_policy: deny\n"
    )
    d = _daemon(docker, tmp_path, policy)
    try:
        web, outside = _web(docker), docker.lab.clients[2]
        assert docker.tcp(web.ns, outside.v4, 7000, timeout=0.5) == "timeout"
        until(lambda: d.decisions(kind="egress"), 5, "the refusal's decision line")
        (line, *_) = d.decisions(kind="egress")
        assert {k: line[k] for k in ("verdict", "zone", "source_ip", "dest_ip", "dest_port")} == {
            "verdict": "deny",
            "zone": None,
            "source_ip": web.v4,
            "dest_ip": outside.v4,
            "dest_port": 7000,
        }
        assert line["direction"] == "forward"
        assert line["reason"] == (
            f"from containers: outbound tcp/7000 to {outside.v4}: no rule matched; "
            "egress default deny"
        )
    finally:
        d.cleanup()
