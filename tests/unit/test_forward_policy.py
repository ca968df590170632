"""Containers in the policy language, the compiler's forward path and `evaluate` forward:
container zones, applies_to, published ports matched on the original destination port,
container egress — without privilege."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.forwarding import forwarding_families
from aitherfwd.compiler import compile_policy
from aitherfwd.control.schema import BlockSpec, RequestError, parse_evaluate
from aitherfwd.daemon import views
from aitherfwd.evaluator import FORWARD, Evaluator, Request
from aitherfwd.nft import names as n
from aitherfwd.policy.containers import forwarding_warning
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import AppliesTo, Policy, Protocol
from aitherfwd.policy.parse import parse_policy
from aitherfwd.testing import fake_daemon

HEAD = """\
version: 1
settings: {default_policy: deny}
zones:
  - {name: docker, cidrs: [172.17.0.0/16, "fd77:0:0:17::/64"]}
  - {name: lan, cidrs: [10.0.0.0/8]}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
"""
RULES = """\
rules:
  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}
  - {name: hostonly, dest_ports: [9000], protocol: tcp, action: allow, applies_to: host}
  - {name: ctronly, dest_ports: [9001], protocol: tcp, action: allow, applies_to: containers}
  - {name: mesh, zone: docker, dest_ports: [80], protocol: tcp, action: allow}
"""


def _policy(text: str) -> Policy:
    result = parse_policy(text, "policy.yaml")
    errors = [d.render() for d in result.diagnostics if d.severity is Severity.ERROR]
    assert result.policy is not None and not errors, errors
    return result.policy


def _diags(text: str) -> list[str]:
    return [d.render() for d in parse_policy(text, "policy.yaml").diagnostics]


def _rules(objects: tuple[dict[str, Any], ...], chain: str) -> list[dict[str, Any]]:
    return [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == chain]


def _labels(objects: tuple[dict[str, Any], ...], chain: str) -> list[str]:
    return [r["comment"].split(" #")[0] for r in _rules(objects, chain)]


# --- the language ------------------------------------------------------------------------------


def test_a_zone_named_docker_holds_containers_unless_it_says_otherwise() -> None:
    p = _policy(HEAD + RULES)
    assert [z.containers for z in p.zones] == [True, False, False]
    off = _policy(HEAD.replace("name: docker,", "name: docker, containers: false,") + RULES)
    assert not off.zones[0].containers
    on = _policy(HEAD.replace("name: lan,", "name: lan, containers: true,") + RULES)
    assert [z.containers for z in on.zones] == [True, True, False]
    assert [r.applies_to for r in p.rules] == [None, AppliesTo.HOST, AppliesTo.CONTAINERS, None]


def test_container_mistakes_are_located_and_coded() -> None:
    text = HEAD.replace("name: lan,", "name: lan, containers: maybe,") + (
        "rules:\n  - {name: x, dest_ports: [1], action: allow, applies_to: contaners}\n"
    )
    found = _diags(text)
    assert any(
        d.startswith("policy.yaml:5:29:") and "[E-TYPE] zones[1].containers" in d for d in found
    )
    assert any("[E-ENUM] rules[0].applies_to" in d for d in found), found


def test_a_container_zone_may_not_take_in_every_address() -> None:
    text = HEAD.replace("name: world,", "name: world, containers: true,") + RULES
    v4, v6 = [d for d in _diags(text) if "error[" in d]
    assert v4.startswith("policy.yaml:6:45: error[E-CONTAINER-ZONE] zones[2].cidrs[0]")
    assert "(::/0)" in v6


def test_applies_to_containers_without_container_zones_warns() -> None:
    text = HEAD.replace("name: docker,", "name: docker, containers: false,") + RULES
    result = parse_policy(text, "policy.yaml")
    assert result.policy is not None
    (w,) = [d.render() for d in result.diagnostics if d.code == "W-NO-CONTAINER-ZONE"]
    assert "rules[2].applies_to" in w and w.startswith("policy.yaml:10:")


# --- the compiler ------------------------------------------------------------------------------


def test_no_container_zone_means_no_forward_hook() -> None:
    text = HEAD.replace("name: docker,", "name: docker, containers: false,") + RULES
    objects = compile_policy(_policy(text)).objects
    assert not [o for o in objects if "chain" in o and o["chain"].get("hook") == "forward"]
    fwd = {n.FWD_IN_CHAIN, n.FWD_OUT_CHAIN, n.FWD_NOZONE_CHAIN, "fzone_docker", "f_web"}
    assert not [o for o in objects if "chain" in o and o["chain"]["name"] in fwd]


def test_forward_chain_hooks_before_docker_and_sends_container_traffic_to_its_paths() -> None:
    objects = compile_policy(_policy(HEAD + RULES)).objects
    (hook,) = [o["chain"] for o in objects if "chain" in o and o["chain"].get("hook") == "forward"]
    assert (hook["name"], hook["prio"], hook["policy"]) == ("forward", -10, "accept")
    labels = _labels(objects, n.FORWARD_CHAIN)
    assert labels[:4] == ["builtin:blocked"] * 4
    assert labels[4:7] == ["builtin:established", "builtin:invalid", "builtin:icmpv6-nd"]
    assert labels[7:] == ["builtin:to-containers"] * 2 + ["builtin:from-containers"] * 2


def test_rules_are_dispatched_by_applies_to_on_each_path() -> None:
    objects = compile_policy(_policy(HEAD + RULES)).objects
    assert _labels(objects, "zone_world") == ["web", "hostonly", "builtin:default"]
    assert _labels(objects, "fzone_world") == ["web", "ctronly", "builtin:default"]
    assert _labels(objects, "fzone_docker") == ["web", "ctronly", "mesh", "builtin:default"]


def test_published_ports_match_the_original_destination_port() -> None:
    objects = compile_policy(_policy(HEAD + RULES)).objects
    (verdict,) = [r for r in _rules(objects, "f_web") if r["comment"].startswith("web ")]
    ct = {"ct": {"key": "proto-dst", "dir": "original"}}
    assert {"match": {"op": "==", "left": ct, "right": 8080}} in verdict["expr"]
    (host,) = [r for r in _rules(objects, "r_web") if r["comment"].startswith("web ")]
    assert "proto-dst" not in repr(host["expr"])


def test_container_egress_takes_the_egress_rules_or_the_egress_default() -> None:
    deny = HEAD.replace(
        "{default_policy: deny}",
        "{default_policy: deny, log_denied: false, egress_default_policy: deny}",
    )
    objects = compile_policy(_policy(deny + RULES)).objects
    # no egress: section: the host's output chain holds the egress default (the kernel and
    # evaluate agree), and container egress takes the very same rules, ending in the drop
    fwd_out = [r["expr"] for r in _rules(objects, n.FWD_OUT_CHAIN)]
    assert fwd_out == [r["expr"] for r in _rules(objects, "output")]
    assert fwd_out[-1][-1] == {"drop": None}
    egress = "egress: {default_action: deny, allowlist: {ips: [192.0.2.0/24]}}\n"
    objects = compile_policy(_policy(HEAD + RULES + egress)).objects
    out = [(r["expr"], r["comment"]) for r in _rules(objects, "output")]
    assert out == [(r["expr"], r["comment"]) for r in _rules(objects, n.FWD_OUT_CHAIN)]


# --- evaluate forward --------------------------------------------------------------------------


def _fwd(ev: Evaluator, source: str, port: int, dest: str = "172.17.0.2") -> tuple[str, Any]:
    req = Request(
        ipaddress.ip_address(source),
        Protocol.TCP,
        port,
        FORWARD,
        ipaddress.ip_address(dest),
    )
    v = ev.evaluate(req, 0.0)
    return v.verdict, v.rule


def test_evaluate_forward_judges_published_ports_with_the_containers_rules() -> None:
    ev = Evaluator(_policy(HEAD + RULES))
    assert _fwd(ev, "198.51.100.7", 8080) == ("allow", "web")
    assert _fwd(ev, "198.51.100.7", 9000) == ("deny", None)  # hostonly
    assert _fwd(ev, "198.51.100.7", 9001) == ("allow", "ctronly")
    assert _fwd(ev, "2001:db8::1", 8080, "fd77:0:0:17::2") == ("allow", "web")
    # container to container: the source container's zone
    assert _fwd(ev, "172.17.0.3", 80) == ("allow", "mesh")
    assert _fwd(ev, "10.1.1.1", 80) == ("deny", None)
    # the host's own ports keep the host's rules
    inbound = Request(ipaddress.ip_address("198.51.100.7"), Protocol.TCP, 9001)
    assert ev.evaluate(inbound, 0.0).verdict == "deny"


def test_evaluate_forward_from_containers_follows_egress() -> None:
    egress = "egress: {default_action: deny, allowlist: {ips: [192.0.2.0/24]}}\n"
    ev = Evaluator(_policy(HEAD + RULES + egress))
    assert _fwd(ev, "172.17.0.2", 443, "192.0.2.9") == ("allow", "allowlist")
    assert _fwd(ev, "172.17.0.2", 443, "198.51.100.1")[0] == "deny"
    # routed traffic that touches no container zone is not judged
    assert _fwd(ev, "10.1.1.1", 443, "198.51.100.1") == ("allow", None)


def test_forward_requests_need_a_destination() -> None:
    with pytest.raises(ValueError, match="forward needs"):
        Request(ipaddress.ip_address("10.0.0.1"), Protocol.TCP, 80, FORWARD)
    with pytest.raises(RequestError):
        parse_evaluate({"source_ip": "10.0.0.1", "dest_port": 80, "direction": "forward"})
    spec = parse_evaluate(
        {"source_ip": "10.0.0.1", "dest_port": 80, "direction": "forward", "dest_ip": "172.17.0.2"}
    )
    assert spec.direction == "forward"


def test_explain_shows_forward_verdicts_and_evaluate_sees_blocks(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, HEAD + RULES)
    s = fake.services
    address = ipaddress.ip_address("198.51.100.7")

    async def body() -> dict[str, Any]:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            before = views.explain(fake.services, address, [8080], Protocol.TCP)
            await s.blocks.block([BlockSpec("198.51.100.7", 600, "x")])
            after = views.explain(fake.services, address, [8080], Protocol.TCP)
            return {"before": before, "after": after}
        finally:
            task.cancel()

    try:
        got = asyncio.run(body())
    finally:
        s.ports.store.close()
    (before,) = got["before"]["forward_verdicts"]
    assert (before["verdict"], before["rule"], before["zone"]) == ("allow", "web", "world")
    (after,) = got["after"]["forward_verdicts"]
    assert after["verdict"] == "deny" and "blocked" in after["reason"]


def test_check_warns_when_the_host_forwards_without_a_container_zone(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    (root / "net/ipv4").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text("1\n")
    assert forwarding_families(root) == [4]  # the IPv6 switch is missing: off
    none = _policy(HEAD.replace("name: docker,", "name: docker, containers: false,"))
    w = forwarding_warning(none, [4], "policy.yaml")
    assert w is not None and w.code == "W-FORWARDING" and "net.ipv4.ip_forward" in w.message
    assert forwarding_warning(_policy(HEAD), [4, 6], "policy.yaml") is None
    assert forwarding_warning(none, [], "policy.yaml") is None
