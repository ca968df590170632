"""The seed's settings do what they say in the compiled ruleset: `egress_default_policy`
without an `egress:` section, `log_denied` on rule denials, `log_allowed`,
`connection_idle_timeout`."""

from __future__ import annotations

import ipaddress
from typing import Any

from aitherfwd.compiler import compile_policy
from aitherfwd.egress import names as en
from aitherfwd.evaluator import OUTBOUND, Evaluator, Request
from aitherfwd.nft import idle
from aitherfwd.policy.model import Action, Protocol
from tests.unit.helpers import ok

RULES = """
rules:
  - {name: no_secrets, dest_services: [Secrets], action: deny}
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""


def _labels(objects: tuple[dict[str, Any], ...], chain: str) -> list[str]:
    return [
        o["rule"]["comment"].split(" #")[0]
        for o in objects
        if "rule" in o and o["rule"]["chain"] == chain
    ]


def test_egress_default_deny_without_an_egress_section_filters_outbound_in_the_kernel() -> None:
    p = ok("settings: {egress_default_policy: deny}\n" + RULES)
    assert p.egress is not None and p.egress.default_action is Action.DENY
    rs = compile_policy(p)
    assert en.OUTPUT_CHAIN in rs.names("chain")
    assert "egress:egress-default" in _labels(rs.objects, en.OUTPUT_CHAIN)
    v = Evaluator(p).evaluate(
        Request(
            ipaddress.ip_address("10.0.0.1"),
            Protocol.TCP,
            443,
            OUTBOUND,
            ipaddress.ip_address("192.0.2.1"),
        ),
        0.0,
    )
    assert v.verdict == "deny"


def test_egress_default_allow_leaves_outbound_unfiltered() -> None:
    p = ok(RULES)
    assert p.egress is None and en.OUTPUT_CHAIN not in compile_policy(p).names("chain")


def test_log_denied_logs_rule_denials_and_not_allows() -> None:
    rs = compile_policy(ok(RULES))
    assert _labels(rs.objects, "r_no_secrets")[0] == "no_secrets:log"
    assert "web:log" not in _labels(rs.objects, "r_web")
    quiet = compile_policy(ok("settings: {log_denied: false}\n" + RULES))
    assert "no_secrets:log" not in _labels(quiet.objects, "r_no_secrets")


def test_log_allowed_reports_new_connections_of_allow_rules() -> None:
    rs = compile_policy(ok("settings: {log_allowed: true}\n" + RULES))
    assert "web:allowed" in _labels(rs.objects, "r_web")
    (rule,) = [
        o["rule"]
        for o in rs.objects
        if "rule" in o and o["rule"]["comment"].startswith("web:allowed")
    ]
    assert {"log": {"prefix": "afwd allowed web", "group": 78}} in rule["expr"]
    assert "web:allowed" not in _labels(compile_policy(ok(RULES)).objects, "r_web")


def test_connection_idle_timeout_becomes_a_ct_timeout_policy_per_family() -> None:
    rs = compile_policy(ok("settings: {connection_idle_timeout: 300}\n" + RULES))
    assert rs.names(idle.KIND) == ["idle_tcp_v4_300", "idle_tcp_v6_300"]
    assert _labels(rs.objects, "idle_in") == ["builtin:idle-timeout"] * 2
    assert _labels(rs.objects, "idle_out") == ["builtin:idle-timeout"] * 2
    plain = compile_policy(ok(RULES))
    assert plain.names(idle.KIND) == [] and "idle_in" not in plain.names("chain")
