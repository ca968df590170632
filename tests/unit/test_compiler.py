"""The compiler: zone partition, rule placement, time windows, verdicts, determinism."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aitherfwd import zones as zoning
from aitherfwd.compiler import compile_policy
from aitherfwd.nft import forward as fwd
from aitherfwd.nft import names as n
from aitherfwd.nft import rulechain as rc
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import Policy, TimeWindow
from aitherfwd.policy.parse import parse_policy
from aitherfwd.reconcile import delta
from tests.unit.helpers import ok, parse
from tests.unit.policy_strategies import policies, to_yaml


def _parse(text: str) -> Policy:
    result = parse_policy(text, "policy.yaml")
    errors = [d.render() for d in result.diagnostics if d.severity is Severity.ERROR]
    assert result.policy is not None and not errors, (errors, text)
    return result.policy


def _rules(objects: tuple[dict[str, Any], ...], chain: str) -> list[dict[str, Any]]:
    return [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == chain]


def test_first_zone_wins_in_the_partition() -> None:
    p = ok("rules: []\n")
    blocks = zoning.partition(p.zones, 4)
    lookup = {str(a): z for a, _, z in blocks}
    assert lookup["10.0.0.0"] == "internal"
    assert lookup["127.0.0.0"] == "loopback"
    assert lookup["0.0.0.0"] == "external"
    # disjoint and complete: every address of 0.0.0.0/0 is covered exactly once
    total = sum(int(b) - int(a) + 1 for a, b, _ in blocks)
    assert total == 2**32
    for addr in ["10.1.2.3", "127.0.0.1", "8.8.8.8", "255.255.255.255"]:
        ip = ipaddress.ip_address(addr)
        owner = next(z for a, b, z in blocks if int(a) <= int(ip) <= int(b))
        assert owner == zoning.classify(p.zones, ip)


def _labels(objects: tuple[dict[str, Any], ...], chain: str) -> list[str]:
    return [r["comment"].split(" #")[0] for r in _rules(objects, chain)]


def test_zone_chains_jump_to_their_rules_chains_in_policy_order() -> None:
    p = ok("""
    rules:
      - {name: first, zone: external, dest_ports: [1], protocol: tcp, action: deny}
      - {name: anyzone, dest_ports: [2], protocol: tcp, action: allow}
      - {name: third, zone: [internal, external], dest_ports: [3], protocol: udp, action: allow}
    """)
    rs = compile_policy(p)
    assert _labels(rs.objects, "zone_external") == [
        "first",
        "anyzone",
        "third",
        "builtin:default",
    ]
    assert _labels(rs.objects, "zone_internal") == ["anyzone", "third", "builtin:default"]
    assert _labels(rs.objects, n.NOZONE_CHAIN) == ["anyzone", "builtin:default"]
    jumps = [r["expr"] for r in _rules(rs.objects, "zone_external")]
    assert jumps[:3] == [
        [{"jump": {"target": f"r_{name}"}}] for name in ("first", "anyzone", "third")
    ]
    assert jumps[3] == [{"goto": {"target": n.FINAL_CHAIN}}]
    # a rule's kernel rules live once, in its own chain, whatever the number of zones
    assert _labels(rs.objects, "r_first") == ["first:log", "first:detect", "first"]  # log_denied
    assert _labels(rs.objects, "r_anyzone") == ["anyzone"]
    every_rule = [r for o in rs.objects if "rule" in o for r in [o["rule"]]]
    anyzone = sum(r["comment"].startswith("anyzone #") for r in every_rule)
    assert anyzone == 1 + len(p.zones) + 1  # its rule, a jump per zone and one from nozone


def test_value_lists_are_named_sets_shared_by_content() -> None:
    p = ok("""
    rules:
      - {name: a, zone: external, dest_ports: [80, 443], protocol: tcp, action: reject}
      - {name: b, zone: internal, dest_ports: [443, 80], protocol: tcp, action: allow}
      - {name: c, source_cidrs: [10.0.0.0/8, 192.168.0.0/16], dest_ports: [80, 443], action: allow}
      - {name: d, source_cidrs: [10.0.0.0/8, 192.168.0.0/16], action: deny}
    """)
    rs = compile_policy(p)
    shared = {
        o["set"]["name"]: o["set"]
        for o in rs.objects
        if "set" in o and n.is_shared_set(o["set"]["name"])
    }
    ports = [s for s in shared.values() if s["type"] == "inet_service"]
    nets = [s for s in shared.values() if s["type"] == "ipv4_addr"]
    assert [s["elem"] for s in ports] == [[80, 443]]
    assert [s["elem"] for s in nets] == [
        [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "192.168.0.0", "len": 16}}]
    ]
    assert nets[0]["flags"] == ["interval"]
    text = repr([o for o in rs.objects if "rule" in o])
    assert "{'set': [" not in text  # no anonymous set left in any rule
    assert (
        text.count(f"@{ports[0]['name']}") == 3 + 1 + 2
    )  # a: log (log_denied), detect and reject; b; c: tcp and udp
    again = compile_policy(ok("rules:\n  - {name: z, dest_ports: [80, 443], action: allow}\n"))
    assert ports[0]["name"] in again.names("set")  # the name is the contents, in any policy


def test_reject_answers_tcp_with_reset_and_the_rest_with_icmp() -> None:
    p = ok("rules:\n  - {name: r, dest_ports: [53], action: reject}\n")
    rules = _rules(compile_policy(p).objects, "r_r")
    stmts = [r["expr"][-1] for r in rules if not r["comment"].startswith(("r:detect", "r:log"))]
    assert stmts == [
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
    ]


def test_time_window_crossing_midnight_becomes_two_kernel_matches() -> None:
    p = ok(
        "rules:\n  - {name: r, time_window: {days: [sat], start: '22:00', end: '02:00'}, "
        "action: allow}\n"
    )
    rules = _rules(compile_policy(p).objects, "r_r")
    days = [r["expr"][0]["match"]["right"] for r in rules]
    hours = [r["expr"][1]["match"]["right"]["range"] for r in rules]
    assert days == [6, 0]  # Saturday evening, then Sunday morning
    assert hours == [[79200, 86399], [0, 7199]]


def test_time_window_contains_matches_the_kernel_split() -> None:
    w = TimeWindow(frozenset({6}), 22 * 3600, 2 * 3600)
    assert w.contains(6, 23 * 3600) and w.contains(0, 3600)
    assert not w.contains(0, 23 * 3600) and not w.contains(6, 3600)


def test_layer7_rules_are_left_out_of_the_kernel_but_keep_their_counter() -> None:
    p = ok("rules:\n  - {name: l7, path_prefix: /admin, action: deny}\n")
    rs = compile_policy(p)
    assert all("l7" not in r["comment"] for r in _rules(rs.objects, "zone_external"))
    assert "r_l7" not in rs.names("chain")
    assert "rule_l7" in rs.names("counter")


def test_rate_limited_rule_gets_per_family_meters_before_its_accept() -> None:
    p = ok(
        "rules:\n  - {name: web, dest_ports: [443], protocol: tcp, rate_limit_rps: 20, "
        "action: allow}\n"
    )
    rs = compile_policy(p)
    assert {"rl_web_v4_20r20", "rl_web_v6_20r20"} <= set(rs.names("set"))
    labels = _labels(rs.objects, "r_web")
    assert labels == ["web:ratelimit", "web", "web:ratelimit", "web"]


def test_every_dynamic_set_exists_from_the_first_apply() -> None:
    rs = compile_policy(ok("rules: []\n"))
    assert set(rs.names("set")) >= n.DYNAMIC_SET_NAMES


def test_blocks_are_dropped_before_established_and_any_rule() -> None:
    rs = compile_policy(ok("rules: []\n"))
    labels = [r["comment"].split(" #")[0] for r in _rules(rs.objects, n.INPUT_CHAIN)]
    assert labels.index("builtin:blocked") < labels.index("builtin:established")
    assert labels[0] == "builtin:loopback"


def test_hash_changes_with_the_policy_and_only_with_it() -> None:
    a = compile_policy(ok("rules:\n  - {name: r, dest_ports: [1], action: allow}\n"))
    b = compile_policy(ok("rules:\n  - {name: r, dest_ports: [2], action: allow}\n"))
    assert a.sha256 != b.sha256
    assert (
        a.sha256
        == compile_policy(ok("rules:\n  - {name: r, dest_ports: [1], action: allow}\n")).sha256
    )


def test_overlapping_source_cidrs_are_collapsed_for_the_kernel() -> None:
    p = ok(
        "rules:\n  - {name: r, source_cidrs: [10.0.0.0/8, 10.1.0.0/16, 11.0.0.0/8], "
        "action: allow}\n"
    )
    (rule,) = _rules(compile_policy(p).objects, "r_r")
    assert rule["expr"][0]["match"]["right"] == {"prefix": {"addr": "10.0.0.0", "len": 7}}


def test_kernel_limits_come_from_settings_and_skip_the_management_zone() -> None:
    p = parse(
        """
    version: 1
    settings: {max_connections_per_ip: 7, syn_flood_threshold: 30}
    zones:
      - {name: management, cidrs: [192.0.2.0/25, 192.0.2.128/25]}
      - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
    rules: []
    """,
        base=False,
    ).policy
    assert p is not None
    rs = compile_policy(p)
    assert {"connlimit_v4_7", "connlimit_v6_7", "synrate_v4_30", "synrate_v6_30"} <= set(
        rs.names("set")
    )
    limits = [
        r
        for r in _rules(rs.objects, n.INPUT_CHAIN)
        if r["comment"].startswith(("builtin:synflood", "builtin:connlimit"))
    ]
    assert len(limits) == 4
    v4 = [r for r in limits if "@synrate_v4_30" in repr(r) or "@connlimit_v4_7" in repr(r)]
    for r in v4:  # collapsed into one prefix, excluded
        assert r["expr"][0]["match"]["op"] == "!="
        assert r["expr"][0]["match"]["right"] == {"prefix": {"addr": "192.0.2.0", "len": 24}}
    off = ok("settings: {max_connections_per_ip: 0, syn_flood_threshold: 0}\nrules: []\n")
    names = compile_policy(off).names("set")
    assert not [s for s in names if s.startswith(("connlimit", "synrate"))]


# --- properties over random valid policies: the jump layout keeps first-match order -------


_CONTROL = ("jump", "goto", "return")


def _inlined(objects: tuple[dict[str, Any], ...], chain: str) -> list[dict[str, Any]]:
    """`chain` with every `jump r_<rule>` replaced by that chain's rules: what the packet
    walks, as the old layout wrote it out in every zone chain."""
    out: list[dict[str, Any]] = []
    for r in _rules(objects, chain):
        target = r["expr"][0].get("jump", {}).get("target", "") if len(r["expr"]) == 1 else ""
        out += _rules(objects, target) if target.startswith(("r_", "f_")) else [r]
    return out


@settings(max_examples=60, deadline=None)
@given(policies())
def test_every_zone_walks_its_rules_in_policy_order_through_the_jumps(doc: dict[str, Any]) -> None:
    policy = _parse(to_yaml(doc))
    rs = compile_policy(policy)
    kernel = [r for r in policy.rules if r.path_prefix is None and r.authenticated is None]
    paths = [(n.zone_chain, n.NOZONE_CHAIN, n.rule_chain, fwd.for_host, n.FINAL_CHAIN)]
    if any(z.containers for z in policy.zones):  # the forward path, its rules (applies_to)
        paths.append(
            (
                n.fwd_zone_chain,
                n.FWD_NOZONE_CHAIN,
                n.fwd_rule_chain,
                fwd.for_containers,
                n.FWD_FINAL_CHAIN,
            )
        )
    for zone_chain, nozone, rule_chain, applies, final in paths:
        for zone in [*(z.name for z in policy.zones), None]:
            chain = zone_chain(zone) if zone else nozone
            concerned = [
                r for r in kernel if applies(r) and (r.zones is None or (zone and zone in r.zones))
            ]
            expected = [k for r in concerned for k in _rules(rs.objects, rule_chain(r.name))]
            walked = _inlined(rs.objects, chain)
            assert walked[:-1] == expected
            assert walked[-1]["expr"] == [{"goto": {"target": final}}]
    kernel = [r for r in kernel if fwd.for_host(r)]
    for r in kernel:
        body = _rules(rs.objects, n.rule_chain(r.name))
        assert body, r.name  # every rule has a kernel rule to match with
        for k in body:
            # no control flow inside a rule's chain: a match ends in its verdict (drop,
            # accept, reject: final for the packet), no match falls off the end and returns
            assert not any(key in e for e in k["expr"] for key in _CONTROL), k
            assert k["comment"].split(" #")[0].split(":")[0] == r.name


@settings(max_examples=40, deadline=None)
@given(policies(), st.data())
def test_changing_one_rule_touches_its_chain_and_its_sets_only(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    kernel = [r for r in doc["rules"] if "path_prefix" not in r and "authenticated" not in r]
    assume(kernel)
    target = data.draw(st.sampled_from(kernel))
    before = compile_policy(_parse(to_yaml(doc)))
    changed = {k: v for k, v in target.items() if k not in ("dest_services", "protocol")}
    changed["dest_ports"] = [4001, 4003, "4005-4009"]
    doc2 = {**doc, "rules": [changed if r is target else r for r in doc["rules"]]}
    after = compile_policy(_parse(to_yaml(doc2)))
    commands = delta(before, after)
    flushed = {c["flush"]["chain"]["name"] for c in commands if "chain" in c.get("flush", {})}
    name = target["name"]
    assert flushed <= {n.META_CHAIN, n.rule_chain(name), n.fwd_rule_chain(name)}
    for c in commands:
        ((verb, body),) = c.items()
        ((kind, obj),) = body.items()
        if kind == "rule":
            assert obj["chain"] in flushed
        elif kind == "set":
            assert n.is_shared_set(obj["name"]) or obj["name"].startswith("rl_"), c
        else:
            assert kind == "chain" and verb == "flush", c


def test_a_memoised_compilation_is_the_cold_one() -> None:
    text = "rules:\n  - {name: r, zone: external, dest_ports: [1, 3], action: reject}\n"
    warm = compile_policy(ok(text))
    rc.compile_rule.cache_clear()
    cold = compile_policy(ok(text))
    assert cold.render_json() == warm.render_json() and cold.sha256 == warm.sha256
