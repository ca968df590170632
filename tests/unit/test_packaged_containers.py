"""The packaged policy covers Docker's networks, IPv4 and IPv6 (issue 16): a published
port is closed until a rule opens it, containers reach each other, the host's own ports
keep their verdicts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from aitherfwd.compiler import compile_policy
from aitherfwd.evaluator import FORWARD, Evaluator, Request
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Policy, Protocol
from aitherfwd.policy.parse import parse_policy

PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "policy.yaml"
NOW = 1_700_000_000.0


def _policy() -> Policy:
    result = parse_policy(PACKAGED.read_text(), "policy.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return result.policy


def _forward(ev: Evaluator, source: str, dest: str, port: int) -> str:
    req = Request(
        ipaddress.ip_address(source), Protocol.TCP, port, FORWARD, ipaddress.ip_address(dest)
    )
    return ev.evaluate(req, NOW).verdict


def test_packaged_docker_zone_holds_containers_in_both_families() -> None:
    policy = _policy()
    (docker,) = [z for z in policy.zones if z.name == "docker"]
    assert docker.containers
    assert {c.version for c in docker.cidrs} == {4, 6}
    assert n.FORWARD_CHAIN in compile_policy(policy).names("chain")


@pytest.mark.parametrize(
    ("client", "container", "other"),
    [
        ("203.0.113.9", "172.17.0.2", "172.17.0.3"),
        ("2001:db8::7", "fd3c:1a2b:3c4d:1::2", "fd3c:1a2b:3c4d:1::3"),  # a Docker 27+ ULA
    ],
)
def test_packaged_policy_closes_published_ports_and_keeps_the_mesh(
    client: str, container: str, other: str
) -> None:
    ev = Evaluator(_policy())
    assert _forward(ev, client, container, 8080) == "deny"  # published: closed by default
    assert _forward(ev, other, container, 80) == "allow"  # container to container
    assert _forward(ev, container, client, 443) == "allow"  # container egress
    host = Request(ipaddress.ip_address(container), Protocol.TCP, 8080)
    assert ev.evaluate(host, NOW).verdict == "deny"  # the mesh rule is not the host's
    ssh = Request(ipaddress.ip_address(container), Protocol.TCP, 22)
    assert ev.evaluate(ssh, NOW).verdict == "allow"
