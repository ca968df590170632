"""The compiler: zone partition, rule placement, time windows, verdicts, determinism."""

from __future__ import annotations

import ipaddress
from typing import Any

from aitherfwd import zones as zoning
from aitherfwd.compiler import compile_policy
from aitherfwd.nft import names as n
from aitherfwd.policy.model import TimeWindow
from tests.unit.helpers import ok, parse


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


def test_rules_land_in_their_zones_chains_in_policy_order() -> None:
    p = ok("""
    rules:
      - {name: first, zone: external, dest_ports: [1], protocol: tcp, action: deny}
      - {name: anyzone, dest_ports: [2], protocol: tcp, action: allow}
      - {name: third, zone: [internal, external], dest_ports: [3], protocol: udp, action: allow}
    """)
    rs = compile_policy(p)
    ext = [r["comment"].split(" #")[0] for r in _rules(rs.objects, "zone_external")]
    internal = [r["comment"].split(" #")[0] for r in _rules(rs.objects, "zone_internal")]
    nozone = [r["comment"].split(" #")[0] for r in _rules(rs.objects, n.NOZONE_CHAIN)]
    assert ext == ["first:detect", "first", "anyzone", "third", "builtin:default"]
    assert internal == ["anyzone", "third", "builtin:default"]
    assert nozone == ["anyzone", "builtin:default"]


def test_reject_answers_tcp_with_reset_and_the_rest_with_icmp() -> None:
    p = ok("rules:\n  - {name: r, dest_ports: [53], action: reject}\n")
    rules = _rules(compile_policy(p).objects, "zone_external")[:-1]
    stmts = [r["expr"][-1] for r in rules if not r["comment"].startswith("r:detect")]
    assert stmts == [
        {"reject": {"type": "tcp reset"}},
        {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
    ]


def test_time_window_crossing_midnight_becomes_two_kernel_matches() -> None:
    p = ok(
        "rules:\n  - {name: r, time_window: {days: [sat], start: '22:00', end: '02:00'}, "
        "action: allow}\n"
    )
    rules = _rules(compile_policy(p).objects, "zone_external")[:-1]
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
    assert "rule_l7" in rs.names("counter")


def test_rate_limited_rule_gets_per_family_meters_before_its_accept() -> None:
    p = ok(
        "rules:\n  - {name: web, dest_ports: [443], protocol: tcp, rate_limit_rps: 20, "
        "action: allow}\n"
    )
    rs = compile_policy(p)
    assert {"rl_web_v4_20r20", "rl_web_v6_20r20"} <= set(rs.names("set"))
    labels = [r["comment"].split(" #")[0] for r in _rules(rs.objects, "zone_external")]
    assert labels == ["web:ratelimit", "web", "web:ratelimit", "web", "builtin:default"]


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
    (rule, _) = _rules(compile_policy(p).objects, "zone_external")
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
