"""The policy view the watch stream carries (control/policyview.py) and the middleware's local
verdicts (asgi/view.py): a JSON round trip keeps every verdict of the daemon's evaluator, on
random policies and random (source, port, path, authenticated, time) requests."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitherfwd.asgi.view import BYPASS, build_view, judge
from aitherfwd.control import policyview
from aitherfwd.dynamic.blocks import Block, BlockTable
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import Policy, Protocol
from aitherfwd.policy.parse import parse_policy
from tests.unit.policy_strategies import policies, to_yaml

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


def parse(text: str) -> Policy:
    result = parse_policy(text, "policy.yaml")
    errors = [d.render() for d in result.diagnostics if d.severity is Severity.ERROR]
    assert result.policy is not None and not errors, errors
    return result.policy


def round_trip(policy: Policy) -> Policy:
    return policyview.decode(json.loads(json.dumps(policyview.encode(policy))))


@st.composite
def sources(draw: st.DrawFn, policy: Policy) -> Any:
    nets = [c for z in policy.zones for c in z.cidrs]
    nets += [c for r in policy.rules for c in r.source_cidrs]
    if nets and draw(st.booleans()):
        net = draw(st.sampled_from(nets))
        offset = draw(st.integers(0, net.num_addresses - 1))
        return net.network_address + offset
    return draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))


@st.composite
def requests(draw: st.DrawFn, policy: Policy) -> tuple[Request, float]:
    ports = [pr.lo for r in policy.rules for pm in r.ports for pr in pm.ranges]
    port = draw(
        st.one_of(st.sampled_from(ports), st.integers(1, 65535)) if ports else st.integers(1, 65535)
    )
    prefixes = [r.path_prefix for r in policy.rules if r.path_prefix is not None]
    path = draw(
        st.one_of(st.sampled_from(prefixes).map(lambda p: p + "x"), st.just("/"))
        if prefixes
        else st.just("/")
    )
    auth = draw(st.booleans())
    now = NOW + draw(st.integers(0, 7 * 86_400))
    return Request(draw(sources(policy)), Protocol.TCP, port, path=path, authenticated=auth), now


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_the_view_round_trip_keeps_every_verdict(data: st.DataObject) -> None:
    policy = parse(to_yaml(data.draw(policies(with_egress=False))))
    copy = round_trip(policy)
    original, mirrored = Evaluator(policy), Evaluator(copy)
    for _ in range(20):
        req, now = data.draw(requests(policy))
        assert mirrored.evaluate(req, now) == original.evaluate(req, now), req


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_judge_without_bypass_is_the_evaluators_verdict_with_blocks(data: st.DataObject) -> None:
    policy = parse(to_yaml(data.draw(policies(with_egress=False))))
    view = build_view(round_trip(policy), 1, [], [], [])
    table = BlockTable()
    req, now = data.draw(requests(policy))
    if data.draw(st.booleans()):
        net = ipaddress.ip_network(req.source)
        table.load([Block(str(net.network_address), now + 60, "", "manual", now)])
    assert req.dest_port is not None and req.path is not None
    got = judge(
        view, req.source, req.dest_port, req.path, bool(req.authenticated), now, table, None
    )
    assert got == Evaluator(policy).evaluate(req, now, table)


POLICY = """
version: 1
settings: {default_policy: deny}
zones:
  - {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}
  - {name: docker, cidrs: [172.17.0.0/16]}
  - {name: internal, cidrs: [10.0.0.0/8]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: admin_needs_login, path_prefix: /admin, authenticated: false, action: deny}
  - {name: no_private, zone: external, path_prefix: /private, action: deny}
  - {name: web, dest_ports: [8000], protocol: tcp, action: allow}
"""


def test_bypass_zones_pass_without_evaluation_and_unknown_zones_are_named() -> None:
    view = build_view(round_trip(parse(POLICY)), 3, [], ["cloudflare"], ["docker", "loopback"])
    ip = ipaddress.ip_address
    assert judge(view, ip("172.17.0.5"), 1, "/admin", False, NOW, None, None).reason == BYPASS
    assert view.unknown_zones == ("cloudflare",)
    assert view.needs_auth


@pytest.mark.parametrize(
    ("source", "path", "auth", "verdict", "rule"),
    [
        ("203.0.113.7", "/", False, "allow", "web"),
        ("203.0.113.7", "/admin/x", False, "deny", "admin_needs_login"),
        ("203.0.113.7", "/admin/x", True, "allow", "web"),
        ("203.0.113.7", "/private", True, "deny", "no_private"),
        ("10.1.2.3", "/private", True, "allow", "web"),
    ],
)
def test_path_prefix_and_authenticated_rules_decide(
    source: str, path: str, auth: bool, verdict: str, rule: str
) -> None:
    view = build_view(round_trip(parse(POLICY)), 1, [], [], [])
    got = judge(view, ipaddress.ip_address(source), 8000, path, auth, NOW, None, None)
    assert (got.verdict, got.rule) == (verdict, rule)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"version": 2},
        {"version": 1, "sha256": "x", "default_policy": "maybe", "zones": [], "rules": []},
        {
            "version": 1,
            "sha256": "x",
            "default_policy": "deny",
            "zones": [{"name": 1}],
            "rules": [],
        },
        {
            "version": 1,
            "sha256": "x",
            "default_policy": "deny",
            "zones": [{"name": "a", "cidrs": ["10.0.0.1/8"]}],
            "rules": [],
        },
        {"version": 1, "sha256": "x", "default_policy": "deny", "zones": [], "rules": [{}]},
    ],
)
def test_a_view_that_does_not_fit_is_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        policyview.decode(bad)
