"""The evaluator: the compiled ruleset's verdicts, step by step, and an indexed lookup that
agrees with a naive first-match walk over a generated policy."""

from __future__ import annotations

import ipaddress
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

import pytest

from aitherfwd import zones as zoning
from aitherfwd.evaluator import Evaluator, Request, TokenBuckets, Verdict
from aitherfwd.policy.model import (
    Action,
    IPAddress,
    IPNetwork,
    Policy,
    PortMatch,
    PortRange,
    Protocol,
    RateLimit,
    Rule,
    Settings,
    TimeWindow,
    Zone,
    merge_ranges,
)
from tests.unit.helpers import ok

TCP, UDP, ICMP = Protocol.TCP, Protocol.UDP, Protocol.ICMP
NOW = 1_700_000_000.0  # Tuesday 2023-11-14 22:13:20 UTC


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def at(stamp: str) -> float:
    """Epoch seconds of a UTC wall-clock time like '2024-01-05 23:00'."""
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def verdict(
    policy: Policy,
    source: str,
    protocol: Protocol = TCP,
    port: int = 443,
    *,
    now: float = NOW,
    direction: str = "inbound",
    path: str | None = None,
    authenticated: bool | None = None,
) -> Verdict:
    """One request (tcp/443 from `source` unless told otherwise) against a fresh evaluator."""
    dest_port = None if protocol is ICMP else port
    req = Request(ip(source), protocol, dest_port, direction, None, path, authenticated)
    return Evaluator(policy).evaluate(req, now)


@dataclass
class FakeBlocks:
    entries: dict[IPAddress, tuple[float | None, str]] = field(default_factory=dict)
    asked: list[IPAddress] = field(default_factory=list)

    def lookup(self, address: IPAddress, now: float) -> tuple[float | None, str] | None:
        self.asked.append(address)
        entry = self.entries.get(address)
        if entry is None or (entry[0] is not None and entry[0] <= now):
            return None
        return entry


WEB = """
rules:
  - {name: web, zone: external, dest_ports: [443], protocol: tcp, action: allow}
"""


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "port", "direction"),
    [
        (Protocol.ANY, 443, "inbound"),
        (TCP, None, "inbound"),
        (UDP, 0, "inbound"),
        (TCP, 65536, "inbound"),
        (ICMP, 7, "inbound"),
        (TCP, 443, "sideways"),
    ],
)
def test_request_refuses_what_no_packet_can_be(
    protocol: Protocol, port: int | None, direction: str
) -> None:
    with pytest.raises(ValueError, match=r"protocol|port|direction"):
        Request(ip("192.0.2.1"), protocol, port, direction)


# --- 1. normalisation and direction ------------------------------------------------------


def test_outbound_gets_the_egress_default_policy_whatever_the_rules() -> None:
    p = ok(WEB)
    v = verdict(p, "192.0.2.1", direction="outbound")
    assert v == Verdict("allow", None, None, v.reason)
    assert "egress default policy allow" in v.reason
    strict = replace(p, settings=Settings(egress_default_policy=Action.REJECT))
    assert verdict(strict, "192.0.2.1", direction="outbound").verdict == "reject"


def test_ipv4_mapped_source_is_judged_as_its_ipv4_address() -> None:
    p = ok("""
    rules:
      - {name: office, source_cidrs: [10.1.0.0/16], dest_ports: [22], protocol: tcp, action: allow}
    """)
    v = verdict(p, "::ffff:10.1.2.3", port=22)
    assert (v.verdict, v.rule, v.zone) == ("allow", "office", "internal")
    blocks = FakeBlocks({ip("10.1.2.3"): (None, "manual")})
    req = Request(ip("::ffff:10.1.2.3"), TCP, 22)
    assert Evaluator(p).evaluate(req, NOW, blocks).verdict == "deny"
    assert blocks.asked == [ip("10.1.2.3")]


# --- 2. loopback ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_is_always_allowed_even_when_a_rule_denies_it(source: str) -> None:
    p = ok("""
    settings: {default_policy: deny}
    rules:
      - {name: nothing, action: deny}
    """)
    blocks = FakeBlocks({ip(source): (None, "oops")})
    v = Evaluator(p).evaluate(Request(ip(source), TCP, 443), NOW, blocks)
    assert (v.verdict, v.rule, v.reason) == ("allow", None, "loopback is always allowed")


# --- 3. blocks ------------------------------------------------------------------------------


def test_blocked_source_is_denied_until_its_block_expires() -> None:
    p = ok(WEB)
    until = at("2024-01-05 12:30")
    blocks = FakeBlocks({ip("203.0.113.9"): (until, "port scan")})
    ev = Evaluator(p)
    v = ev.evaluate(Request(ip("203.0.113.9"), TCP, 443), until - 1, blocks)
    assert (v.verdict, v.rule, v.zone) == ("deny", None, "external")
    assert v.reason == "blocked until 2024-01-05T12:30:00Z: port scan"
    assert ev.evaluate(Request(ip("203.0.113.9"), TCP, 443), until, blocks).rule == "web"


def test_permanent_block_says_so() -> None:
    blocks = FakeBlocks({ip("2001:db8::9"): (None, "abuse")})
    v = Evaluator(ok(WEB)).evaluate(Request(ip("2001:db8::9"), TCP, 443), NOW, blocks)
    assert (v.verdict, v.reason) == ("deny", "blocked permanently: abuse")


# --- 4. zones -------------------------------------------------------------------------------


def test_source_takes_the_first_zone_that_contains_it() -> None:
    p = ok("""
    rules:
      - {name: inside, zone: internal, action: allow}
      - {name: outside, zone: external, action: reject}
    """)
    assert verdict(p, "10.9.9.9").rule == "inside"
    assert verdict(p, "fd00::5").zone == "internal"
    assert verdict(p, "8.8.8.8").rule == "outside"
    assert verdict(p, "2001:db8::1").rule == "outside"


def test_source_in_no_zone_meets_only_rules_without_a_zone() -> None:
    p = ok("""
    rules:
      - {name: inside, zone: internal, action: deny}
      - {name: anyone, dest_ports: [443], protocol: tcp, action: allow}
    """)
    p = replace(p, zones=p.zones[:2])  # drop `external`: public sources are in no zone
    v = verdict(p, "198.51.100.4")
    assert (v.verdict, v.rule, v.zone) == ("allow", "anyone", None)
    assert "198.51.100.4 (in no zone)" in v.reason
    assert verdict(p, "10.0.0.1").rule == "inside"


def test_rule_with_several_zones_applies_to_each() -> None:
    p = ok("""
    rules:
      - {name: both, zone: [internal, loopback], dest_ports: [25], protocol: tcp, action: allow}
    """)
    assert verdict(p, "10.0.0.1", port=25).rule == "both"
    assert verdict(p, "192.0.2.1", port=25).rule is None


# --- 5. matching, first match wins ---------------------------------------------------------


def test_first_matching_rule_in_policy_order_decides() -> None:
    p = ok("""
    rules:
      - {name: scanner, source_cidrs: [203.0.113.0/24], action: deny}
      - {name: web, zone: external, dest_ports: [443, "8000-8100"], protocol: tcp, action: allow}
      - {name: web-too-late, zone: external, dest_ports: [443], protocol: tcp, action: reject}
    """)
    assert verdict(p, "203.0.113.50").rule == "scanner"
    v = verdict(p, "198.51.100.1")
    assert v == Verdict("allow", "web", "external", "rule 'web' allows tcp/443 from zone external")
    assert verdict(p, "198.51.100.1", port=8100).rule == "web"
    assert verdict(p, "198.51.100.1", port=8101).rule is None


def test_service_names_resolve_to_their_ports_and_protocols() -> None:
    p = ok("""
    rules:
      - {name: bastion, dest_services: [Bastion], action: allow}
      - {name: dns, dest_services: [DNS], action: allow}
    """)
    assert verdict(p, "192.0.2.1", TCP, 80).rule == "bastion"
    assert verdict(p, "192.0.2.1", UDP, 443).rule is None  # Bastion is tcp only
    assert verdict(p, "192.0.2.1", UDP, 53).rule == "dns"
    assert verdict(p, "192.0.2.1", TCP, 53).rule == "dns"


def test_protocols_without_ports() -> None:
    p = ok("""
    rules:
      - {name: ping, protocol: icmp, action: allow}
      - {name: udp-any-port, protocol: udp, action: reject}
      - {name: everything, zone: internal, action: allow}
    """)
    assert verdict(p, "192.0.2.1", ICMP).rule == "ping"
    assert verdict(p, "2001:db8::1", ICMP).rule == "ping"
    assert verdict(p, "192.0.2.1", UDP, 5000).rule == "udp-any-port"
    assert verdict(p, "192.0.2.1", TCP, 5000).rule is None
    assert verdict(p, "10.0.0.1", TCP, 1).rule == "everything"


def test_a_rule_with_ports_never_matches_icmp() -> None:
    p = ok("rules:\n  - {name: web, dest_ports: [443], action: allow}\n")
    assert verdict(p, "192.0.2.1", UDP, 443).rule == "web"  # `any` with ports: tcp and udp
    assert verdict(p, "192.0.2.1", ICMP).rule is None


def test_source_cidrs_match_only_addresses_of_their_ip_version() -> None:
    p = ok("""
    rules:
      - {name: v6-office, source_cidrs: ["2001:db8:1::/48"], action: allow}
      - {name: v4-office, source_cidrs: [198.51.100.0/24, 192.0.2.7], action: reject}
    """)
    assert verdict(p, "2001:db8:1:ffff::1").rule == "v6-office"
    assert verdict(p, "2001:db8:2::1").rule is None
    assert verdict(p, "198.51.100.255").rule == "v4-office"
    assert verdict(p, "192.0.2.7").rule == "v4-office"
    assert verdict(p, "192.0.2.8").rule is None


def test_ipv6_sources_use_the_ipv6_zones() -> None:
    p = ok("""
    rules:
      - {name: mgmt, zone: internal, dest_ports: [22], protocol: tcp, action: allow}
      - {name: no-ssh, dest_ports: [22], protocol: tcp, action: reject}
    """)
    assert (verdict(p, "fd12::1", port=22).rule, verdict(p, "fd12::1").zone) == ("mgmt", "internal")
    v = verdict(p, "2001:db8::1", port=22)
    assert (v.verdict, v.rule, v.zone) == ("reject", "no-ssh", "external")


OVERNIGHT = """
rules:
  - name: overnight
    dest_ports: [8080]
    protocol: tcp
    time_window: {days: [fri], start: "22:00", end: "02:00", timezone: UTC}
    action: allow
"""


@pytest.mark.parametrize(
    ("stamp", "rule"),
    [
        ("2024-01-05 21:59:59", None),  # Friday, before the window opens
        ("2024-01-05 22:00", "overnight"),  # Friday
        ("2024-01-05 23:59:59", "overnight"),
        ("2024-01-06 00:00", "overnight"),  # Saturday: the tail of Friday's window
        ("2024-01-06 01:59:59", "overnight"),
        ("2024-01-06 02:00", None),
        ("2024-01-06 23:00", None),  # Saturday night is not Friday night
        ("2024-01-05 01:00", None),  # Friday morning belongs to Thursday's window
    ],
)
def test_time_window_crossing_midnight_belongs_to_the_day_it_opened(
    stamp: str, rule: str | None
) -> None:
    assert verdict(ok(OVERNIGHT), "192.0.2.1", port=8080, now=at(stamp)).rule == rule


def test_layer7_rules_match_only_requests_that_carry_the_fields() -> None:
    p = ok("""
    rules:
      - {name: admin-api, dest_ports: [443], protocol: tcp, path_prefix: /admin,
         authenticated: true, action: allow}
      - {name: no-admin, dest_ports: [443], protocol: tcp, path_prefix: /admin, action: reject}
      - {name: web, dest_ports: [443], protocol: tcp, action: allow}
    """)
    assert verdict(p, "192.0.2.1").rule == "web"  # like the kernel: the L7 rules are absent
    assert verdict(p, "192.0.2.1", authenticated=True).rule == "web"
    assert verdict(p, "192.0.2.1", path="/admin/users", authenticated=True).rule == "admin-api"
    assert verdict(p, "192.0.2.1", path="/admin/users", authenticated=False).rule == "no-admin"
    assert verdict(p, "192.0.2.1", path="/admin").rule == "no-admin"
    assert verdict(p, "192.0.2.1", path="/public").rule == "web"


# --- 6. rate limits -------------------------------------------------------------------------

LIMITED = """
rules:
  - {name: api, dest_ports: [443], protocol: tcp, rate_limit_rps: 2, burst: 3, action: allow}
"""


def test_rate_limit_allows_a_burst_then_refills_at_the_rate() -> None:
    ev, buckets = Evaluator(ok(LIMITED)), TokenBuckets()
    req = Request(ip("198.51.100.1"), TCP, 443)
    t = 5_000.0

    def outcome(now: float) -> str:
        return ev.evaluate(req, now, buckets=buckets).verdict

    assert [outcome(t) for _ in range(4)] == ["allow", "allow", "allow", "rate_limited"]
    assert outcome(t + 0.4) == "rate_limited"  # 0.8 of a token
    assert outcome(t + 0.5) == "allow"  # one token at 2/s
    assert outcome(t + 0.5) == "rate_limited"
    assert [outcome(t + 10) for _ in range(4)] == ["allow", "allow", "allow", "rate_limited"]
    v = ev.evaluate(req, t + 10, buckets=buckets)
    assert (v.verdict, v.rule) == ("rate_limited", "api")
    assert "over 2/s (burst 3)" in v.reason


def test_rate_limit_meters_each_source_on_its_own() -> None:
    ev, buckets = Evaluator(ok(LIMITED)), TokenBuckets()
    first, second = Request(ip("198.51.100.1"), TCP, 443), Request(ip("2001:db8::1"), TCP, 443)
    assert [ev.evaluate(first, 0.0, buckets=buckets).verdict for _ in range(4)][-1] == (
        "rate_limited"
    )
    assert ev.evaluate(second, 0.0, buckets=buckets).verdict == "allow"


def test_without_buckets_a_rate_limited_rule_just_applies_its_action() -> None:
    ev = Evaluator(ok(LIMITED))
    req = Request(ip("198.51.100.1"), TCP, 443)
    assert {ev.evaluate(req, NOW).verdict for _ in range(10)} == {"allow"}


def test_bucket_left_idle_for_the_meter_timeout_starts_full_again() -> None:
    buckets = TokenBuckets(idle_timeout=60)
    key = ("slow", "192.0.2.1")
    assert [buckets.take(key, 1, 100, 0.0) for _ in range(101)][-1] is False
    assert buckets.take(key, 1, 100, 59.0)  # refilled 59 tokens, not 100
    assert [buckets.take(key, 1, 100, 59.0) for _ in range(58)][-1] is True
    assert buckets.take(key, 1, 100, 59.0) is False
    assert [buckets.take(key, 1, 100, 119.0) for _ in range(100)] == [True] * 100


def test_buckets_are_bounded_and_forget_the_least_recently_used() -> None:
    buckets = TokenBuckets(max_keys=2)
    a, b, c = ("r", "a"), ("r", "b"), ("r", "c")
    assert buckets.take(a, 1, 1, 0.0) and buckets.take(b, 1, 1, 0.0)
    assert not buckets.take(a, 1, 1, 0.0)  # a is now the most recently used
    assert buckets.take(c, 1, 1, 0.0)  # evicts b
    assert len(buckets) == 2
    assert buckets.take(b, 1, 1, 0.0)  # b starts afresh; evicts a
    assert buckets.take(a, 1, 1, 0.0)


# --- 7./8. actions and the default policy --------------------------------------------------


def test_rule_actions_become_verdicts() -> None:
    p = ok("""
    rules:
      - {name: a, dest_ports: [1], protocol: tcp, action: allow}
      - {name: d, dest_ports: [2], protocol: tcp, action: deny}
      - {name: r, dest_ports: [3], protocol: tcp, action: reject}
    """)
    assert [verdict(p, "192.0.2.1", port=n).verdict for n in (1, 2, 3)] == [
        "allow",
        "deny",
        "reject",
    ]
    assert verdict(p, "192.0.2.1", port=2).reason == "rule 'd' denies tcp/2 from zone external"


@pytest.mark.parametrize("action", ["deny", "reject", "allow"])
def test_default_policy_decides_when_no_rule_matches(action: str) -> None:
    p = ok(f"settings: {{default_policy: {action}}}\n" + WEB)
    v = verdict(p, "192.0.2.1", UDP, 443)
    assert v == Verdict(action, None, "external", f"no rule matched; default policy {action}")


# --- the index agrees with a naive first-match walk ----------------------------------------

ZONES = (
    Zone("mgmt", (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00:1::/32"))),
    Zone("internal", (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))),
    Zone("dmz", (ipaddress.ip_network("192.168.0.0/16"),)),
    # half the IPv4 space and 2000::/3 only: the rest is in no zone
    Zone("external", (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("2000::/3"))),
)
CIDR_POOL = (
    "10.1.0.0/16",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "130.0.0.0/8",
    "fd00::/8",
    "2001:db8::/32",
)
PATHS = (None, "/a", "/a/b", "/b", "/c")


def random_cidr(rng: random.Random) -> IPNetwork:
    outer = ipaddress.ip_network(rng.choice(CIDR_POOL))
    plen = rng.randint(outer.prefixlen, outer.prefixlen + 16)
    address = outer.network_address + rng.randrange(outer.num_addresses)
    return ipaddress.ip_network(f"{address}/{plen}", strict=False)


def random_ports(rng: random.Random) -> tuple[PortMatch, ...]:
    protocols = rng.choice(((TCP,), (UDP,), (TCP, UDP)))
    out = []
    for proto in protocols:
        ranges = []
        for _ in range(rng.randint(1, 3)):
            lo = rng.randint(1, 1000)
            ranges.append(PortRange(lo, lo if rng.random() < 0.6 else lo + rng.randint(1, 20)))
        out.append(PortMatch(proto, merge_ranges(ranges)))
    return tuple(out)


def random_window(rng: random.Random) -> TimeWindow:
    days = frozenset(rng.sample(range(7), rng.randint(1, 7)))
    start = rng.randrange(24) * 3600
    end = rng.randint(1, 24) * 3600
    return TimeWindow(days, start, end if end != start else end % 86400 + 3600)


def random_rule(rng: random.Random, i: int) -> Rule:
    ports = random_ports(rng) if rng.random() < 0.85 else ()
    protocol = Protocol.ANY if ports else rng.choice((Protocol.ANY, TCP, UDP, ICMP))
    zones = (
        None
        if rng.random() < 0.2
        else tuple(rng.sample([z.name for z in ZONES], rng.randint(1, 2)))
    )
    sources = (
        tuple(random_cidr(rng) for _ in range(rng.randint(1, 3)))
        if not ports or rng.random() < 0.5  # no port-less catch-alls
        else ()
    )
    action = rng.choice(list(Action))
    return Rule(
        name=f"r{i}",
        action=action,
        zones=zones,
        protocol=protocol,
        ports=ports,
        services=(),
        source_cidrs=sources,
        time_window=random_window(rng) if rng.random() < 0.15 else None,
        rate_limit=RateLimit(5, 10) if action is Action.ALLOW and rng.random() < 0.1 else None,
        log=False,
        path_prefix=rng.choice(PATHS[1:]) if rng.random() < 0.1 else None,
        authenticated=rng.choice((True, False)) if rng.random() < 0.1 else None,
    )


def random_request(rng: random.Random, policy: Policy) -> Request:
    roll = rng.random()
    if roll < 0.5:
        net = rng.choice([c for r in policy.rules for c in r.source_cidrs])
        source: IPAddress = net.network_address + rng.randrange(net.num_addresses)
    elif roll < 0.8:
        source = random_cidr(rng).network_address
    elif roll < 0.9:
        source = ipaddress.IPv4Address(rng.getrandbits(32))
    else:
        source = ipaddress.IPv6Address(rng.getrandbits(128))
    if isinstance(source, ipaddress.IPv4Address) and rng.random() < 0.1:
        source = ipaddress.IPv6Address(f"::ffff:{source}")
    protocol = rng.choice((TCP, TCP, UDP, ICMP))
    port = None if protocol is ICMP else rng.randint(1, 1030)
    if port is not None and rng.random() < 0.5:
        rule_ports = [r for rule in policy.rules for pm in rule.ports for r in pm.ranges]
        port = rng.choice((rng.choice(rule_ports).lo, rng.choice(rule_ports).hi))
    auth = rng.choice((None, True, False))
    return Request(source, protocol, port, path=rng.choice(PATHS), authenticated=auth)


def reference(policy: Policy, req: Request, now: float) -> tuple[str, str | None, str | None]:
    """First match by walking every rule, straight from the model and the docs."""
    source = req.source
    if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
        source = source.ipv4_mapped
    zone = zoning.classify(policy.zones, source)
    if source.is_loopback:
        return "allow", None, zone
    t = time.gmtime(now)
    weekday, second = (t.tm_wday + 1) % 7, t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
    for rule in policy.rules:
        if rule.zones is not None and zone not in rule.zones:
            continue
        if rule.ports:
            if req.dest_port is None or not any(
                pm.protocol is req.protocol and pm.covers(req.dest_port) for pm in rule.ports
            ):
                continue
        elif rule.protocol not in (Protocol.ANY, req.protocol):
            continue
        if rule.source_cidrs and not any(
            c.version == source.version and source in c for c in rule.source_cidrs
        ):
            continue
        if rule.time_window and not rule.time_window.contains(weekday, second):
            continue
        if rule.path_prefix is not None and (
            req.path is None or not req.path.startswith(rule.path_prefix)
        ):
            continue
        if rule.authenticated is not None and req.authenticated != rule.authenticated:
            continue
        return str(rule.action), rule.name, zone
    return str(policy.settings.default_policy), None, zone


def test_indexed_lookup_agrees_with_a_linear_walk_on_a_generated_policy() -> None:
    rng = random.Random(20240105)
    rules = tuple(random_rule(rng, i) for i in range(200))
    policy = Policy(1, Settings(default_policy=Action.REJECT), ZONES, (), rules, "0" * 64)
    ev = Evaluator(policy)
    deciding: Counter[str | None] = Counter()
    for _ in range(5000):
        req = random_request(rng, policy)
        now = at("2024-01-01 00:00") + rng.randrange(14 * 86400)
        got = ev.evaluate(req, now)
        assert (got.verdict, got.rule, got.zone) == reference(policy, req, now), req
        deciding[got.rule] += 1
    # the requests exercise the default and many rules, not one catch-all
    assert 1000 < deciding.total() - deciding[None] < 4000
    assert len(deciding) > 50
