"""The forward path reports the published port and meets the country/list stage (issue
16): the compiled detection rules swap the port around the log and back, inside one rule
and after the limit; the default and the kernel limits of the forward path have chains of
their own; fwd_in holds the drop stage and the list zones; the evaluator agrees."""

from __future__ import annotations

import ipaddress
from typing import Any

from aitherfwd.compiler import compile_policy
from aitherfwd.evaluator import FORWARD, Evaluator, Request
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.policy.model import IPAddress, Policy, Protocol
from aitherfwd.policy.parse import parse_policy

POLICY = """\
version: 1
settings: {default_policy: deny, log_allowed: true}
geoip: {database: /nonexistent.mmdb, block_countries: [RU]}
lists:
  - {name: drop, path: /nonexistent.txt, action: deny}
  - {name: cdn, path: /nonexistent2.txt}
zones:
  - {name: docker, cidrs: [172.17.0.0/16]}
  - {name: cloud, list: cdn}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}
  - {name: no_admin, dest_ports: [9000], protocol: tcp, action: reject}
  - {name: cloud_only, zone: cloud, dest_ports: [9999], protocol: tcp, action: allow}
"""
SWAP = b.mangle(b.payload("th", "dport"), b.ct_original("proto-dst"))
BACK = b.mangle(b.payload("th", "dport"), b.ct_reply("proto-src"))


def _policy() -> Policy:
    result = parse_policy(POLICY, "p.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return result.policy


def _chain(policy: Policy, chain: str) -> list[dict[str, Any]]:
    return [
        o["rule"] for o in compile_policy(policy).objects if o.get("rule", {}).get("chain") == chain
    ]


def _report(rule: dict[str, Any]) -> tuple[int, int, int, int]:
    """Positions of the limit, the swap, the log and the swap back in a rule."""
    exprs = rule["expr"]
    limit = next(i for i, e in enumerate(exprs) if "limit" in e)
    log = next(i for i, e in enumerate(exprs) if "log" in e)
    return limit, exprs.index(SWAP), log, exprs.index(BACK)


def test_a_forward_denial_logs_the_published_port_and_restores_the_packet() -> None:
    (detect,) = [r for r in _chain(_policy(), "f_no_admin") if ":detect" in r["comment"]]
    limit, swap, log, back = _report(detect)
    assert limit < swap < log < back == len(detect["expr"]) - 1  # nothing after: no verdict
    assert detect["expr"][log]["log"] == {"prefix": "afwd denied no_admin", "group": 78}


def test_a_log_allowed_accept_on_the_forward_path_reports_the_published_port() -> None:
    (allowed,) = [r for r in _chain(_policy(), "f_web") if ":allowed" in r["comment"]]
    assert _report(allowed)[2] > 0
    assert not [r for r in _chain(_policy(), "r_web") if SWAP in r["expr"]]  # input: as is


def test_forward_default_and_limits_have_chains_of_their_own() -> None:
    policy = _policy()
    zone = _chain(policy, n.fwd_zone_chain("world"))
    assert zone[-1]["expr"] == [b.goto(n.FWD_FINAL_CHAIN)]
    final = _chain(policy, n.FWD_FINAL_CHAIN)
    assert [r for r in final if SWAP in r["expr"]]
    assert final[-1]["expr"] == [b.named_counter(n.DEFAULT_COUNTER), b.drop()]
    jumps = [e for r in _chain(policy, n.FWD_IN_CHAIN) for e in r["expr"] if "jump" in e]
    targets = {j["jump"]["target"] for j in jumps}
    assert targets == {n.FWD_SYNFLOOD_CHAIN, n.FWD_CONNLIMIT_CHAIN}
    assert [r for r in _chain(policy, n.FWD_CONNLIMIT_CHAIN) if SWAP in r["expr"]]


def test_fwd_in_drops_blocked_countries_and_deny_lists_then_dispatches_list_zones() -> None:
    labels = [r["comment"].split(" #")[0] for r in _chain(_policy(), n.FWD_IN_CHAIN)]
    drops = [
        i for i, label in enumerate(labels) if label in ("builtin:countries", "builtin:list:drop")
    ]
    limits = [
        i for i, label in enumerate(labels) if label in ("builtin:synflood", "builtin:connlimit")
    ]
    listzone = [i for i, label in enumerate(labels) if label == "builtin:listzone:cloud"]
    zones = [i for i, label in enumerate(labels) if label == "builtin:zones"]
    assert len(drops) == 4 and len(listzone) == 2  # both families
    assert max(drops) < min(limits) and max(limits) < min(listzone) < min(zones)


class _Geo:
    def __init__(self, countries: dict[str, str], lists: dict[str, tuple[str, ...]]) -> None:
        self.countries, self.lists = countries, lists

    def country_of(self, address: IPAddress) -> str | None:
        return self.countries.get(str(address))

    def lists_of(self, address: IPAddress) -> tuple[str, ...]:
        return self.lists.get(str(address), ())


def test_evaluate_forward_meets_the_country_and_list_stage_and_list_zones() -> None:
    ev = Evaluator(_policy())
    geo = _Geo({"198.51.100.7": "RU", "198.51.100.8": "FR"}, {"203.0.113.5": ("cdn",)})

    def forward(source: str, port: int) -> tuple[str, str | None]:
        req = Request(
            ipaddress.ip_address(source),
            Protocol.TCP,
            port,
            FORWARD,
            ipaddress.ip_address("172.17.0.2"),
        )
        v = ev.evaluate(req, 0.0, geo=geo)
        return v.verdict, v.zone

    assert forward("198.51.100.7", 8080) == ("deny", "world")  # blocked country
    assert forward("198.51.100.8", 8080) == ("allow", "world")
    assert forward("203.0.113.5", 9999) == ("allow", "cloud")  # the list zone's rule
    assert forward("198.51.100.8", 9999) == ("deny", "world")
