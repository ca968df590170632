"""Containers obey the policy: real packets through a Docker-shaped host (a bridge, two
container namespaces, Docker's DNAT, masquerade and iptables-nft filter rules) with the
forward path of `inet aitherfwd` applied — v4 and v6."""

from __future__ import annotations

import ipaddress
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.evaluator import FORWARD, Evaluator, Request
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import Policy, Protocol
from aitherfwd.policy.parse import parse_policy
from lab import AITHERFWD, netns
from lab.containers import DockerHost
from lab.netns import inside
from lab.network import Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

HEAD = """\
version: 1
settings: {default_policy: deny, syn_flood_threshold: 100000}
zones:
  - {name: docker, cidrs: [172.17.0.0/16, "fd77:0:0:17::/64"]}
  - {name: lan, cidrs: [10.77.1.0/24, "fd77:0:0:1::/64"]}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
"""


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerHost]:
    with Lab(clients_wanted=2) as lab:
        host = DockerHost(lab).setup(containers=2)
        try:
            web, other = host.containers
            host.publish(web, 8080, 80)
            host.publish(other, 8081, 80)
            host.listen(web.ns, [80])
            host.listen(other.ns, [80, 81])
            host.listen(lab.clients[1].ns, [7000])  # somewhere outside
            host.listen(lab.clients[0].ns, [9000])
            lab.listen([9000])  # a port of the host itself
            yield host
        finally:
            host.close()


def _apply(host: DockerHost, rules: str = "", head: str = HEAD) -> Policy:
    result = parse_policy(head + rules, "policy.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    with inside(host.host):
        nft = Nft()
        nft.delete_table()
        nft.apply(compile_policy(result.policy))
    return result.policy


def _remove(host: DockerHost) -> None:
    with inside(host.host):
        Nft().delete_table()


def _client_addrs(host: DockerHost, fam: int) -> tuple[str, str]:
    """(client namespace, the host's address as that client sees it)"""
    c = host.lab.clients[0]
    return c.ns, (c.server_v4 if fam == 4 else f"{c.server_v6}")


@pytest.mark.parametrize("fam", [4, 6])
def test_docker_alone_publishes_the_port_to_everyone(docker: DockerHost, fam: int) -> None:
    _remove(docker)
    ns, addr = _client_addrs(docker, fam)
    assert docker.tcp(ns, addr, 8080) == "ok"


@pytest.mark.parametrize("fam", [4, 6])
def test_published_port_is_closed_by_default_and_opened_by_a_rule(
    docker: DockerHost, fam: int
) -> None:
    ns, addr = _client_addrs(docker, fam)
    _apply(docker)
    assert docker.tcp(ns, addr, 8080) == "timeout"
    assert docker.tcp(ns, addr, 22) == "refused"  # the host's own path is unchanged
    _apply(docker, "  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}\n")
    assert docker.tcp(ns, addr, 8080) == "ok"
    assert docker.tcp(ns, addr, 8081) == "timeout"


def test_a_rule_for_the_container_port_does_not_open_the_published_port(
    docker: DockerHost,
) -> None:
    ns, addr = _client_addrs(docker, 4)
    _apply(docker, "  - {name: inner, dest_ports: [80], protocol: tcp, action: allow}\n")
    assert docker.tcp(ns, addr, 8080) == "timeout"


def test_applies_to_narrows_a_rule_to_the_host_or_to_containers(docker: DockerHost) -> None:
    ns, addr = _client_addrs(docker, 4)
    _apply(
        docker,
        "  - {name: h, dest_ports: [8080, 9000], protocol: tcp, action: allow, applies_to: host}\n",
    )
    assert docker.probe(ns, addr, 9000) == ["ok"]
    assert docker.tcp(ns, addr, 8080) == "timeout"
    _apply(
        docker,
        "  - {name: c, dest_ports: [8080, 9000], protocol: tcp, action: allow,"
        " applies_to: containers}\n",
    )
    assert docker.tcp(ns, addr, 9000) == "timeout"
    assert docker.tcp(ns, addr, 8080) == "ok"


@pytest.mark.parametrize("fam", [4, 6])
def test_banned_source_cannot_reach_the_published_port(docker: DockerHost, fam: int) -> None:
    ns, addr = _client_addrs(docker, fam)
    _apply(docker, "  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}\n")
    assert docker.tcp(ns, addr, 8080) == "ok"
    client = docker.lab.clients[0]
    source, set_name = (client.v4, "block_v4") if fam == 4 else (client.v6, "block_v6")
    with inside(docker.host):
        Nft().run([b.add(b.element(set_name, [b.timed(source, 600)]))])
    assert docker.tcp(ns, addr, 8080) == "timeout"
    other = docker.lab.clients[1]  # everyone else still gets in
    other_addr = other.server_v4 if fam == 4 else other.server_v6
    assert docker.tcp(other.ns, other_addr, 8080) == "ok"


@pytest.mark.parametrize("fam", [4, 6])
def test_container_to_container_follows_the_docker_zone_rules(docker: DockerHost, fam: int) -> None:
    web, other = docker.containers
    target = other.v4 if fam == 4 else other.v6
    _apply(docker)
    assert docker.tcp(web.ns, target, 80) == "timeout"
    _apply(
        docker,
        "  - {name: mesh, zone: docker, dest_ports: [80], protocol: tcp, action: allow}\n",
    )
    assert docker.tcp(web.ns, target, 80) == "ok"
    assert docker.tcp(web.ns, target, 81) == "timeout"


EGRESS = """\
egress:
  default_action: deny
  allowlist: {ips: [10.77.2.2/32, "fd77:0:0:2::2/128"]}
"""


@pytest.mark.parametrize("fam", [4, 6])
def test_container_egress_follows_the_allowlist_and_a_sandbox_grant(
    docker: DockerHost, fam: int
) -> None:
    web, _ = docker.containers
    allowed, other = docker.lab.clients[1], docker.lab.clients[0]
    _apply(docker, EGRESS)
    if fam == 4:
        assert docker.tcp(web.ns, allowed.v4, 7000) == "ok"
        assert docker.tcp(web.ns, other.v4, 9000) == "timeout"
    else:
        assert docker.tcp(web.ns, allowed.v6, 7000) == "ok"
        assert docker.tcp(web.ns, other.v6, 9000) == "timeout"
    target, set_name = (other.v4, "sandbox_v4") if fam == 4 else (other.v6, "sandbox_v6")
    with inside(docker.host):  # a grant for 3 s, with its kernel timeout
        Nft().run([b.add(b.element(set_name, [b.timed(target, 3)]))])
    assert docker.tcp(web.ns, target, 9000) == "ok"
    until(lambda: docker.tcp(web.ns, target, 9000, timeout=0.3) == "timeout", 10, "expiry")


def test_aitherfwd_enforces_without_dockers_filter_rules() -> None:
    with Lab(clients_wanted=1) as lab:
        host = DockerHost(lab).setup(containers=1, filter_rules=False)
        try:
            (web,) = host.containers
            host.publish(web, 8080, 80)
            host.listen(web.ns, [80])
            ns, addr = lab.clients[0].ns, lab.clients[0].server_v4
            assert host.tcp(ns, addr, 8080) == "ok"  # Docker's NAT alone: open
            _apply(host)
            assert host.tcp(ns, addr, 8080) == "timeout"
            _apply(host, "  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}\n")
            assert host.tcp(ns, addr, 8080) == "ok"
        finally:
            host.close()


# --- evaluate forward agrees with the packets ------------------------------------------------

OUTCOME = {"allow": "ok", "deny": "timeout", "reject": "refused"}
ZONES: list[object] = [None, "docker", "lan", "world", ["lan", "world"]]


def _random_rules(rng: random.Random) -> str:
    lines = ["  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}"]
    for i in range(rng.randint(1, 5)):
        fields = [f"name: r{i}", "protocol: tcp", f"action: {rng.choice(list(OUTCOME))}"]
        zone = rng.choice(ZONES)
        if zone is not None:
            fields.append(f"zone: {zone}".replace("'", ""))
        if rng.random() < 0.85:
            ports = rng.sample([80, 81, 8080, 8081], rng.randint(1, 3))
            fields.append(f"dest_ports: {sorted(ports)}")
        applies = rng.choice([None, None, "host", "containers"])
        if applies is not None:
            fields.append(f"applies_to: {applies}")
        lines.append("  - {" + ", ".join(fields) + "}")
    return "\n".join(lines) + "\n"


def test_evaluate_forward_agrees_with_the_packets_on_random_policies(
    docker: DockerHost,
) -> None:
    rng = random.Random(16)
    web, other = docker.containers
    lan, world = docker.lab.clients
    # (namespace, source, destination the client dials, container after DNAT, published port)
    cases = [
        (lan.ns, lan.v4, lan.server_v4, other.v4, 8081),
        (world.ns, world.v4, world.server_v4, web.v4, 8080),
        (world.ns, world.v6, world.server_v6, web.v6, 8080),
        (web.ns, web.v4, other.v4, other.v4, 80),
        (web.ns, web.v6, other.v6, other.v6, 81),
    ]
    for _ in range(8):
        rules = _random_rules(rng)
        head = HEAD.replace(
            "default_policy: deny", f"default_policy: {rng.choice(['deny', 'reject'])}"
        )
        ev = Evaluator(_apply(docker, rules.split("\n", 1)[1], head))
        for ns, source, dial, container, port in cases:
            req = Request(
                ipaddress.ip_address(source),
                Protocol.TCP,
                port,
                FORWARD,
                ipaddress.ip_address(container),
            )
            verdict = ev.evaluate(req, time.time())
            got = docker.tcp(ns, dial, port, timeout=0.5)
            assert got == OUTCOME[verdict.verdict], (rules, source, port, verdict)


def test_check_warns_on_a_forwarding_host_whose_policy_has_no_container_zone(
    docker: DockerHost, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD.replace("name: docker,", "name: docker, containers: false,"))
    argv = netns.exec_argv(docker.host, [AITHERFWD, "check", str(path)])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "warning[W-FORWARDING] zones" in res.stdout, res.stdout
    path.write_text(HEAD)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "W-FORWARDING" not in res.stdout, res.stdout
