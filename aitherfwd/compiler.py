"""Policy to ruleset: a deterministic, pure function (layer L1).

Owns: the kernel layout of table `inet aitherfwd` — the input chain (loopback, blocks,
established, zone dispatch), one chain per zone holding that zone's rules in policy order,
the default verdict — and the content hash of the result. Same input, byte-identical output.

Layout of the input path:
    input:  iif lo accept · saddr in block sets drop · ct established,related accept ·
            ct invalid drop · ICMPv6 neighbour discovery accept ·
            ip saddr vmap @zone_v4 · ip6 saddr vmap @zone_v6 · goto nozone
    zone_X: the rules that apply to zone X, first match wins · goto final
    nozone: the rules without a zone · goto final
    final:  (rate-limited log) · counter "default" · default verdict
A packet belongs to exactly one zone, so first-match over all rules equals first-match
within its zone's chain. Rules with layer-7 conditions are left out of the kernel.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aitherfwd import zones as zoning
from aitherfwd.egress.chain import egress_objects
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.nft.verdicts import log_exprs, verdicts
from aitherfwd.policy.model import (
    DAY_SECONDS,
    Action,
    IPAddress,
    Policy,
    PortMatch,
    Protocol,
    Rule,
    TimeWindow,
)

Json = b.Json

RATELIMIT_SET_TIMEOUT = 60
RATELIMIT_SET_SIZE = 65_536
ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The compiled table: objects to add, in dependency order, and their content hash."""

    objects: tuple[Json, ...]
    sha256: str
    policy_sha256: str

    def commands(self) -> list[Json]:
        return [b.add(o) for o in self.objects]

    def to_json(self) -> Json:
        return b.batch(self.commands())

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def names(self, kind: str) -> list[str]:
        return [o[kind]["name"] for o in self.objects if kind in o and "name" in o[kind]]


def compile_policy(policy: Policy) -> Ruleset:
    objects: list[Json] = [b.table()]
    rules = [r for r in policy.rules if r.path_prefix is None and r.authenticated is None]
    counters = [n.DEFAULT_COUNTER, n.BLOCKED_COUNTER, n.INVALID_COUNTER]
    counters += [n.CONNLIMIT_COUNTER, n.SYNFLOOD_COUNTER]
    counters += [n.rule_counter(r.name) for r in policy.rules]
    counters += [n.ratelimit_counter(r.name) for r in rules if r.rate_limit]
    objects += [b.counter(c) for c in sorted(counters)]
    objects += [b.set_(s.name, s.type, s.flags) for s in n.DYNAMIC_SETS]
    objects += _meter_sets(policy)
    for r in rules:
        if r.rate_limit:
            for fam in (4, 6):
                objects.append(
                    b.set_(
                        n.ratelimit_set(r.name, fam, r.rate_limit.rate, r.rate_limit.burst),
                        _addr_type(fam),
                        ["timeout"],
                        timeout=RATELIMIT_SET_TIMEOUT,
                        size=RATELIMIT_SET_SIZE,
                    )
                )
    zone_names = [z.name for z in policy.zones]
    objects.append(b.chain(n.INPUT_CHAIN, hook="input", prio=0, policy="accept"))
    objects += [b.chain(c) for c in [n.FINAL_CHAIN, n.NOZONE_CHAIN, n.META_CHAIN]]
    objects += [b.chain(c) for c in [n.CONNLIMIT_CHAIN, n.SYNFLOOD_CHAIN]]
    objects += [b.chain(n.zone_chain(z)) for z in zone_names]
    for fam, map_name in ((4, n.ZONE_MAP_V4), (6, n.ZONE_MAP_V6)):
        elements = [
            [_interval(first, last), b.goto(n.zone_chain(zone))]
            for first, last, zone in zoning.partition(policy.zones, fam)
        ]
        objects.append(b.vmap_(map_name, _addr_type(fam), elements))
    objects += _input_chain(policy)
    objects += _detect_chains()
    for zone in zone_names:
        chain = n.zone_chain(zone)
        objects += [
            rule for r in rules if r.zones is None or zone in r.zones for rule in _rule(chain, r)
        ]
        objects.append(_tail(chain))
    objects += [rule for r in rules if r.zones is None for rule in _rule(n.NOZONE_CHAIN, r)]
    objects.append(_tail(n.NOZONE_CHAIN))
    objects += _final_chain(policy)
    objects += egress_objects(policy)  # the output chain; [] without an `egress:` section
    digest = _digest(objects)
    objects += [
        b.rule(n.META_CHAIN, [b.ret()], f"{kind} {body['name']} #{_digest([o])[:12]}")
        for o in objects
        for kind, body in o.items()
        if kind in ("set", "map") and body["name"] not in n.DYNAMIC_SET_NAMES
    ]
    # two comments: nft's text parser refuses comments over 128 characters
    objects.append(b.rule(n.META_CHAIN, [b.ret()], f"aitherfwd ruleset={digest}"))
    objects.append(b.rule(n.META_CHAIN, [b.ret()], f"aitherfwd policy={policy.sha256}"))
    return Ruleset(tuple(objects), digest, policy.sha256)


def _interval(first: IPAddress, last: IPAddress) -> Json:
    net = zoning.as_prefix(first, last)
    if net is not None:
        return b.prefix(str(net.network_address), net.prefixlen)
    return b.range_(str(first), str(last))


def _addr_type(family: int) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"


def _saddr(family: int) -> Json:
    return b.payload("ip" if family == 4 else "ip6", "saddr")


def _digest(objects: list[Json]) -> str:
    text = json.dumps(objects, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _commented(chain: str, exprs: list[Json], label: str) -> Json:
    """Every kernel rule's comment names its policy rule plus a hash of its expressions, so
    a verdict traces back to the rule and `plan` can diff by comment alone. (`repr` of the
    builders' dicts is deterministic and three times cheaper than canonical JSON.)"""
    h = hashlib.sha256(repr(exprs).encode()).hexdigest()[:12]
    return b.rule(chain, exprs, f"{label} #{h}")


def _meter_sets(policy: Policy) -> list[Json]:
    """The kernel's per-source meters: concurrent connections (`ct count`; no timeout, the
    kernel drops an element when its count reaches zero) and SYN rate (`limit rate`)."""
    st = policy.settings
    out = []
    for fam in (4, 6):
        if st.max_connections_per_ip:
            name = n.connlimit_set(fam, st.max_connections_per_ip)
            out.append(b.set_(name, _addr_type(fam), [], size=RATELIMIT_SET_SIZE))
        if st.syn_flood_threshold:
            out.append(
                b.set_(
                    n.synrate_set(fam, st.syn_flood_threshold),
                    _addr_type(fam),
                    ["timeout"],
                    timeout=RATELIMIT_SET_TIMEOUT,
                    size=RATELIMIT_SET_SIZE,
                )
            )
    return out


def _kernel_limits(policy: Policy) -> list[Json]:
    """Line one of detection, per packet in the kernel: SYNs over `syn_flood_threshold`/s
    per source are dropped; new connections beyond `max_connections_per_ip` concurrent ones
    per source are refused. Both jump to a chain that logs (bounded) for the daemon. Sources
    in the management zone are exempt (anti-lockout)."""
    st = policy.settings
    c = n.INPUT_CHAIN
    out = []
    mgmt = [net for z in policy.zones if z.name == "management" for net in z.cidrs]
    for fam in (4, 6):
        nfproto = b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6")
        fam_nets = [m for m in mgmt if m.version == fam]
        nets = list(ipaddress.collapse_addresses(fam_nets))  # type: ignore[type-var]
        if nets:  # anti-lockout: the management zone is never limited
            exempt = b.anon_set([b.prefix(str(m.network_address), m.prefixlen) for m in nets])
            nfproto = b.match(_saddr(fam), exempt, "!=")
        if st.syn_flood_threshold:
            rate = st.syn_flood_threshold
            meter = b.update_set(
                n.synrate_set(fam, rate), _saddr(fam), b.limit(rate, "second", rate, over=True)
            )
            exprs = [nfproto, b.tcp_syn(), meter, b.jump(n.SYNFLOOD_CHAIN)]
            out.append(_commented(c, exprs, "builtin:synflood"))
        if st.max_connections_per_ip:
            limit = st.max_connections_per_ip
            count = b.add_set(n.connlimit_set(fam, limit), _saddr(fam), b.ct_count_over(limit))
            new = b.match(b.ct("state"), ["new"], "in")
            exprs = [nfproto, new, count, b.jump(n.CONNLIMIT_CHAIN)]
            out.append(_commented(c, exprs, "builtin:connlimit"))
    return out


def _detect_log(kind: str, rule: str = "-") -> list[Json]:
    return [
        b.limit(n.DETECT_LOG_RATE, "second", n.DETECT_LOG_RATE),
        b.log(n.detect_prefix(kind, rule), n.DETECT_GROUP),
    ]


def _denied_log(chain: str, matches: list[Json], rule: str) -> Json:
    """A denied new connection, reported to the daemon's scan detector (no verdict here)."""
    new = b.match(b.ct("state"), ["new"], "in")
    return _commented(chain, [*matches, new, *_detect_log(n.KIND_DENIED, rule)], f"{rule}:detect")


def _detect_chains() -> list[Json]:
    out = [
        _commented(n.SYNFLOOD_CHAIN, _detect_log(n.KIND_SYNFLOOD), "synflood:log"),
        _commented(
            n.SYNFLOOD_CHAIN, [b.named_counter(n.SYNFLOOD_COUNTER), b.drop()], "synflood:drop"
        ),
        _commented(n.CONNLIMIT_CHAIN, _detect_log(n.KIND_CONNLIMIT), "connlimit:log"),
    ]
    for v in verdicts(Action.REJECT, None):
        exprs = [*v[:-1], b.named_counter(n.CONNLIMIT_COUNTER), v[-1]]
        out.append(_commented(n.CONNLIMIT_CHAIN, exprs, "connlimit:reject"))
    return out


def _input_chain(policy: Policy) -> list[Json]:
    c = n.INPUT_CHAIN
    out = [_commented(c, [b.match(b.meta("iif"), "lo"), b.accept()], "builtin:loopback")]
    for s in n.BLOCK_SETS:
        fam = 4 if s.type == "ipv4_addr" else 6
        out.append(
            _commented(
                c,
                [b.in_set(_saddr(fam), s.name), b.named_counter(n.BLOCKED_COUNTER), b.drop()],
                "builtin:blocked",
            )
        )
    out.append(
        _commented(
            c,
            [b.match(b.ct("state"), ["established", "related"], "in"), b.accept()],
            "builtin:established",
        )
    )
    out.append(
        _commented(
            c,
            [
                b.match(b.ct("state"), ["invalid"], "in"),
                b.named_counter(n.INVALID_COUNTER),
                b.drop(),
            ],
            "builtin:invalid",
        )
    )
    out += _kernel_limits(policy)
    out.append(
        _commented(
            c,
            [b.match(b.payload("icmpv6", "type"), {"set": ND_TYPES}), b.accept()],
            "builtin:icmpv6-nd",
        )
    )
    out.append(_commented(c, [b.vmap_lookup(_saddr(4), n.ZONE_MAP_V4)], "builtin:zones"))
    out.append(_commented(c, [b.vmap_lookup(_saddr(6), n.ZONE_MAP_V6)], "builtin:zones"))
    out.append(_commented(c, [b.goto(n.NOZONE_CHAIN)], "builtin:nozone"))
    return out


def _tail(chain: str) -> Json:
    return _commented(chain, [b.goto(n.FINAL_CHAIN)], "builtin:default")


def _final_chain(policy: Policy) -> list[Json]:
    action = policy.settings.default_policy
    exprs: list[Json] = []
    out: list[Json] = []
    if policy.settings.log_denied and action is not Action.ALLOW:
        out.append(_commented(n.FINAL_CHAIN, _log(f"afw {action} default "), "default:log"))
    if action is not Action.ALLOW:
        out.append(_denied_log(n.FINAL_CHAIN, [], "default"))
    exprs.append(b.named_counter(n.DEFAULT_COUNTER))
    out += [_commented(n.FINAL_CHAIN, [*exprs, *v], "default") for v in verdicts(action, None)]
    return out


def _rule(chain: str, rule: Rule) -> Iterator[Json]:
    for fam, proto, matches in _variants(rule):
        if rule.rate_limit and fam is not None:
            rl = rule.rate_limit
            meter = b.update_set(
                n.ratelimit_set(rule.name, fam, rl.rate, rl.burst),
                _saddr(fam),
                b.limit(rl.rate, "second", rl.burst, over=True),
            )
            yield _commented(
                chain,
                [*matches, meter, b.named_counter(n.ratelimit_counter(rule.name)), b.drop()],
                f"{rule.name}:ratelimit",
            )
        if rule.log:
            # A rule of its own: the log's rate limit must never decide whether the verdict
            # below matches (past the limit, packets would fall through to later rules).
            yield _commented(
                chain,
                [*matches, *_log(f"afw {rule.action} {rule.name} ")],
                f"{rule.name}:log",
            )
        if rule.action is not Action.ALLOW:
            yield _denied_log(chain, matches, rule.name)
        for verdict in verdicts(rule.action, proto):
            head = verdict[:-1]
            yield _commented(
                chain,
                [*matches, *head, b.named_counter(n.rule_counter(rule.name)), verdict[-1]],
                rule.name,
            )


def _variants(rule: Rule) -> Iterator[tuple[int | None, Protocol | None, list[Json]]]:
    """The cross product of address family × protocol/ports × time-window pieces."""
    families: list[int | None] = [*sorted({c.version for c in rule.source_cidrs})] or [None]
    if rule.rate_limit and families == [None]:
        families = [4, 6]  # the per-source meter is per family
    for fam in families:
        base: list[Json] = []
        if fam is not None and rule.source_cidrs:
            # collapsed: overlapping intervals in one set are refused by the kernel
            nets = list(
                ipaddress.collapse_addresses(  # type: ignore[type-var]
                    c for c in rule.source_cidrs if c.version == fam
                )
            )
            base.append(
                b.match(
                    _saddr(fam),
                    b.anon_set([b.prefix(str(c.network_address), c.prefixlen) for c in nets]),
                )
            )
        elif fam is not None:
            base.append(b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6"))
        for proto, port_exprs in _protocols(rule):
            for window in _windows(rule.time_window):
                yield fam, proto, [*base, *port_exprs, *window]


def _protocols(rule: Rule) -> Iterator[tuple[Protocol | None, list[Json]]]:
    if rule.ports:
        for pm in rule.ports:
            yield pm.protocol, [b.match(b.payload(str(pm.protocol), "dport"), _port_set(pm))]
    elif rule.protocol is Protocol.ICMP:
        yield None, [b.match(b.meta("l4proto"), {"set": ["icmp", "ipv6-icmp"]})]
    elif rule.protocol in (Protocol.TCP, Protocol.UDP):
        yield rule.protocol, [b.match(b.meta("l4proto"), str(rule.protocol))]
    else:
        yield None, []


def _port_set(pm: PortMatch) -> Any:
    return b.anon_set([r.lo if r.lo == r.hi else b.range_(r.lo, r.hi) for r in pm.ranges])


def _windows(window: TimeWindow | None) -> Iterator[list[Json]]:
    """Kernel time matches in UTC seconds (integers, so libnftables applies no time zone)."""
    if window is None:
        yield []
        return
    pieces: list[tuple[frozenset[int], int, int]]
    if window.start < window.end:
        pieces = [(window.days, window.start, window.end)]
    else:  # crosses midnight: the tail of each day, then the head of the next
        pieces = [(window.days, window.start, DAY_SECONDS)]
        if window.end > 0:
            pieces.append((frozenset((d + 1) % 7 for d in window.days), 0, window.end))
    for days, start, end in pieces:
        exprs: list[Json] = []
        if len(days) < 7:
            exprs.append(b.match(b.meta("day"), b.anon_set(sorted(days))))
        exprs.append(b.match(b.meta("hour"), b.range_(start, end - 1)))
        yield exprs


def _log(prefix: str) -> list[Json]:
    return log_exprs(prefix, n.LOG_GROUP)
