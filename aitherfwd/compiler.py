"""Policy to ruleset: a deterministic, pure function (layer L1).

Owns: the kernel layout of table `inet aitherfwd` — the input chain (loopback, blocks,
established, zone dispatch), one chain per policy rule, one chain per zone that jumps to
the rules concerning it in policy order, the default verdict — and the content hash of the
result. Same input, byte-identical output.

Layout of the input path:
    input:  iif lo accept · saddr in block sets drop · ct established,related accept ·
            ct invalid drop · ICMPv6 neighbour discovery accept ·
            ip saddr vmap @zone_v4 · ip6 saddr vmap @zone_v6 · goto nozone
    zone_X: jump r_<rule> for each rule that applies to zone X, in policy order · goto final
    nozone: jump r_<rule> for each rule without a zone · goto final
    r_<rule>: the rule's kernel rules; a match ends in a verdict, no match returns
    final:  (rate-limited log) · counter "default" · default verdict
A packet belongs to exactly one zone, so first-match over all rules equals first-match
within its zone's chain. A rule without a zone is one chain every zone jumps to, not a copy
per zone; value lists (ports, prefixes) are named sets shared by content (nft/shared.py).
A reload that changes one rule changes that rule's chain (and the sets only it used).
Rules with layer-7 conditions are left out of the kernel.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

from aitherfwd import zones as zoning
from aitherfwd.egress.chain import egress_objects
from aitherfwd.nft import builders as b
from aitherfwd.nft import forward as fwd
from aitherfwd.nft import geo, idle
from aitherfwd.nft import names as n
from aitherfwd.nft import rulechain as rc
from aitherfwd.nft.shared import SharedSets
from aitherfwd.nft.verdicts import verdicts
from aitherfwd.policy.model import (
    Action,
    IPAddress,
    Policy,
    Rule,
    Settings,
    Zone,
)
from aitherfwd.policy.timezones import localize, zoned

Json = b.Json

RATELIMIT_SET_TIMEOUT = rc.RATELIMIT_SET_TIMEOUT  # the evaluator mirrors the meters
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


def _localized(policy: Policy, now: float | None) -> Policy:
    if not zoned(policy):
        return policy
    if now is None:
        raise ValueError("a policy with zoned time windows compiles at an instant: pass now")
    return localize(policy, now)


def _chains(zone_names: list[str], rules: list[Rule], maps: Sequence[Json]) -> list[Json]:
    """The input path's base and regular chains (the maps are the frame's)."""
    chains = [b.chain(n.INPUT_CHAIN, hook="input", prio=0, policy="accept")]
    chains += [b.chain(c) for c in [n.FINAL_CHAIN, n.NOZONE_CHAIN, n.META_CHAIN]]
    chains.append(b.chain(n.SET_HASH_CHAIN))
    chains += [b.chain(c) for c in [n.CONNLIMIT_CHAIN, n.SYNFLOOD_CHAIN]]
    chains += [b.chain(n.zone_chain(z)) for z in zone_names]
    chains += [b.chain(n.rule_chain(r.name)) for r in rules]
    return [*chains, *maps]


def compile_policy(policy: Policy, now: float | None = None) -> Ruleset:
    """`now` is needed when a time window names a time zone: the kernel matches in UTC, so
    such windows are compiled at the zone's offset at `now` (policy/timezones.py)."""
    policy = _localized(policy, now)
    kernel = [r for r in policy.rules if r.path_prefix is None and r.authenticated is None]
    rules = [r for r in kernel if fwd.for_host(r)]
    frame = _frame(policy.settings, policy.zones)
    st = policy.settings
    compiled = [rc.compile_rule(r, st.log_denied, st.log_allowed) for r in rules]
    shared = SharedSets()
    shared.adopt(frame.sets)
    egress = egress_objects(policy)
    forward = fwd.forward_part(
        policy,
        kernel,
        lambda c: _kernel_limits(policy.settings, policy.zones, shared, c),
        egress,
        shared,
    )
    if forward is not None:
        compiled += forward.compiled
    for c in compiled:
        shared.adopt(c.shared)
    counters = [n.DEFAULT_COUNTER, n.BLOCKED_COUNTER, n.INVALID_COUNTER]
    counters += [n.CONNLIMIT_COUNTER, n.SYNFLOOD_COUNTER]
    counters += [n.rule_counter(r.name) for r in policy.rules]
    counters += [n.ratelimit_counter(r.name) for r in kernel if r.rate_limit]
    counters += geo.counters(policy)
    head: list[Json] = [b.table(), *(b.counter(c) for c in sorted(counters))]
    head += idle.objects(policy.settings.connection_idle_timeout)
    head += [b.set_(s.name, s.type, s.flags) for s in n.DYNAMIC_SETS]
    head += geo.sets(policy)
    head += frame.meters
    head += list({m["set"]["name"]: m for c in compiled for m in c.meters}.values())
    zone_names = [z.name for z in policy.zones]
    chains = _chains(zone_names, rules, frame.maps)
    if forward is not None:
        chains += forward.chains
    chains += idle.chains(policy.settings.connection_idle_timeout)
    body = _with_geo(policy, frame.input_rules)
    body += [
        rc.commented(c, x, "builtin:idle-timeout")
        for c, x in idle.attach(policy.settings.connection_idle_timeout)
    ]
    for c in compiled:
        body += c.rules
    for zone in zone_names:
        body += _dispatch(
            n.zone_chain(zone), [r for r in rules if r.zones is None or zone in r.zones]
        )
    body += _dispatch(n.NOZONE_CHAIN, [r for r in rules if r.zones is None])
    body += frame.final_rules
    if forward is not None:
        body += forward.rules
    objects = [*head, *shared.objects(), *chains, *body, *egress]
    if forward is not None:
        objects += forward.out_rules
    digest = _ruleset_digest(objects)
    # the contents of every static set and map (shared sets are named by their contents)
    objects += frame.hash_rules
    objects += list({h["rule"]["comment"]: h for c in compiled for h in c.hash_rules}.values())
    if forward is not None:
        objects += forward.hash_rules
    objects += rc.set_hash_rules(egress)
    # two comments: nft's text parser refuses comments over 128 characters
    objects.append(b.rule(n.META_CHAIN, [b.ret()], f"aitherfwd ruleset={digest}"))
    objects.append(b.rule(n.META_CHAIN, [b.ret()], f"aitherfwd policy={policy.sha256}"))
    return Ruleset(tuple(objects), digest, policy.sha256)


def _with_geo(policy: Policy, input_rules: tuple[Json, ...]) -> list[Json]:
    """The input chain with the country/list drop stage after `ct invalid drop` (before
    any rule; established connections keep flowing) and the list zones' dispatch before
    the CIDR zone maps (nft/geo.py)."""
    drops = [rc.commented(n.INPUT_CHAIN, e, label) for e, label in geo.drop_stage(policy)]
    zones = [rc.commented(n.INPUT_CHAIN, e, label) for e, label in geo.zone_dispatch(policy)]
    if not drops and not zones:
        return list(input_rules)
    out: list[Json] = []
    for rule in input_rules:
        label = str(rule["rule"].get("comment", ""))
        if zones and label.startswith("builtin:zones"):
            out += zones
            zones = []
        out.append(rule)
        if drops and label.startswith("builtin:invalid"):
            out += drops
            drops = []
    return out


def clear_memo() -> None:
    """Forget every memoised piece (for measuring a first compile; output is unaffected)."""
    rc.compile_rule.cache_clear()
    _frame.cache_clear()
    _jump.cache_clear()
    _tail.cache_clear()


@dataclass(frozen=True, slots=True)
class _Frame:
    """What settings and zones alone decide: the input chain, detection and default
    chains, the meters and the zone maps."""

    meters: tuple[Json, ...]
    maps: tuple[Json, ...]
    input_rules: tuple[Json, ...]  # the input chain, then the synflood and connlimit chains
    final_rules: tuple[Json, ...]
    sets: tuple[Json, ...]  # the shared sets the input chain uses
    hash_rules: tuple[Json, ...]


@functools.lru_cache(maxsize=16)
def _frame(settings: Settings, zones: tuple[Zone, ...]) -> _Frame:
    """Memoised on its (frozen) inputs, like `rulechain.compile_rule`: most reloads change
    rules only."""
    shared = SharedSets()
    meters = _meter_sets(settings)
    maps = []
    for fam, map_name in ((4, n.ZONE_MAP_V4), (6, n.ZONE_MAP_V6)):
        elements = [
            [_interval(first, last), b.goto(n.zone_chain(zone))]
            for first, last, zone in zoning.partition(zones, fam)
        ]
        maps.append(b.vmap_(map_name, rc.addr_type(fam), elements))
    input_rules = [*_input_chain(settings, zones, shared), *_detect_chains()]
    return _Frame(
        tuple(meters),
        tuple(maps),
        tuple(input_rules),
        tuple(_final_chain(settings)),
        tuple(shared.objects()),
        tuple(rc.set_hash_rules([*meters, *maps])),
    )


def _dispatch(chain: str, rules: list[Rule]) -> list[Json]:
    """A zone's chain: one jump per rule that concerns the zone, in policy order, then the
    default. A rule's chain ends in a verdict when it matches and returns when it does not,
    so the first rule that matches decides, exactly as if its kernel rules stood here."""
    out = [_jump(chain, r.name) for r in rules]
    out.append(_tail(chain))
    return out


@functools.lru_cache(maxsize=rc.RULE_CACHE_SIZE)
def _jump(chain: str, rule: str) -> Json:
    """`jump r_<rule>`, commented with the rule's name (memoised like `rulechain.compile_rule`)."""
    return rc.commented(chain, [b.jump(n.rule_chain(rule))], rule)


def _interval(first: IPAddress, last: IPAddress) -> Json:
    net = zoning.as_prefix(first, last)
    if net is not None:
        return b.prefix(str(net.network_address), net.prefixlen)
    return b.range_(str(first), str(last))


def _ruleset_digest(objects: list[Json]) -> str:
    """The content hash of the ruleset. A rule counts by its chain and comment (the comment
    carries a hash of its expressions), every other object by its `repr`: the builders make
    dicts in a fixed key order, so this is deterministic, and several times cheaper than
    canonical JSON of every rule."""
    lines = [
        f"{r['chain']}\0{r['comment']}" if (r := o.get("rule")) is not None else repr(o)
        for o in objects
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _meter_sets(st: Settings) -> list[Json]:
    """The kernel's per-source meters: concurrent connections (`ct count`; no timeout, the
    kernel drops an element when its count reaches zero) and SYN rate (`limit rate`)."""
    out = []
    for fam in (4, 6):
        if st.max_connections_per_ip:
            name = n.connlimit_set(fam, st.max_connections_per_ip)
            out.append(b.set_(name, rc.addr_type(fam), [], size=rc.RATELIMIT_SET_SIZE))
        if st.syn_flood_threshold:
            out.append(
                b.set_(
                    n.synrate_set(fam, st.syn_flood_threshold),
                    rc.addr_type(fam),
                    ["timeout"],
                    timeout=rc.RATELIMIT_SET_TIMEOUT,
                    size=rc.RATELIMIT_SET_SIZE,
                )
            )
    return out


def _kernel_limits(
    st: Settings, zones: tuple[Zone, ...], shared: SharedSets, c: str = n.INPUT_CHAIN
) -> list[Json]:
    """Line one of detection, per packet in the kernel: SYNs over `syn_flood_threshold`/s
    per source are dropped; new connections beyond `max_connections_per_ip` concurrent ones
    per source are refused. Both jump to a chain that logs (bounded) for the daemon. Sources
    in the management zone are exempt (anti-lockout). `c`: the input chain, or the forward
    path's `fwd_in` (the same meters: a source's budget is one, whichever path it takes)."""
    out = []
    synflood, connlimit = n.SYNFLOOD_CHAIN, n.CONNLIMIT_CHAIN
    if c == n.FWD_IN_CHAIN:  # the forward path's report the published port (nft/fwdlog.py)
        synflood, connlimit = n.FWD_SYNFLOOD_CHAIN, n.FWD_CONNLIMIT_CHAIN
    mgmt = [net for z in zones if z.name == "management" for net in z.cidrs]
    for fam in (4, 6):
        nfproto = b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6")
        fam_nets = [m for m in mgmt if m.version == fam]
        nets = list(ipaddress.collapse_addresses(fam_nets))  # type: ignore[type-var]
        if nets:  # anti-lockout: the management zone is never limited
            exempt = shared.prefixes(fam, tuple(nets))
            nfproto = b.match(rc.saddr(fam), exempt, "!=")
        if st.syn_flood_threshold:
            rate = st.syn_flood_threshold
            meter = b.update_set(
                n.synrate_set(fam, rate), rc.saddr(fam), b.limit(rate, "second", rate, over=True)
            )
            exprs = [nfproto, b.tcp_syn(), meter, b.jump(synflood)]
            out.append(rc.commented(c, exprs, "builtin:synflood"))
        if st.max_connections_per_ip:
            limit = st.max_connections_per_ip
            count = b.add_set(n.connlimit_set(fam, limit), rc.saddr(fam), b.ct_count_over(limit))
            new = b.match(b.ct("state"), ["new"], "in")
            exprs = [nfproto, new, count, b.jump(connlimit)]
            out.append(rc.commented(c, exprs, "builtin:connlimit"))
    return out


def _detect_chains() -> list[Json]:
    out = [
        rc.commented(n.SYNFLOOD_CHAIN, rc.detect_log(n.KIND_SYNFLOOD), "synflood:log"),
        rc.commented(
            n.SYNFLOOD_CHAIN, [b.named_counter(n.SYNFLOOD_COUNTER), b.drop()], "synflood:drop"
        ),
        rc.commented(n.CONNLIMIT_CHAIN, rc.detect_log(n.KIND_CONNLIMIT), "connlimit:log"),
    ]
    for v in verdicts(Action.REJECT, None):
        exprs = [*v[:-1], b.named_counter(n.CONNLIMIT_COUNTER), v[-1]]
        out.append(rc.commented(n.CONNLIMIT_CHAIN, exprs, "connlimit:reject"))
    return out


def _input_chain(st: Settings, zones: tuple[Zone, ...], shared: SharedSets) -> list[Json]:
    c = n.INPUT_CHAIN
    out = [rc.commented(c, [b.match(b.meta("iif"), "lo"), b.accept()], "builtin:loopback")]
    for s in n.BLOCK_SETS:
        fam = 4 if s.type == "ipv4_addr" else 6
        out.append(
            rc.commented(
                c,
                [b.in_set(rc.saddr(fam), s.name), b.named_counter(n.BLOCKED_COUNTER), b.drop()],
                "builtin:blocked",
            )
        )
    out.append(
        rc.commented(
            c,
            [b.match(b.ct("state"), ["established", "related"], "in"), b.accept()],
            "builtin:established",
        )
    )
    out.append(
        rc.commented(
            c,
            [
                b.match(b.ct("state"), ["invalid"], "in"),
                b.named_counter(n.INVALID_COUNTER),
                b.drop(),
            ],
            "builtin:invalid",
        )
    )
    out += _kernel_limits(st, zones, shared)
    nd = shared.constant("icmp6", "icmpv6_type", tuple(ND_TYPES))
    out.append(
        rc.commented(
            c,
            [b.match(b.payload("icmpv6", "type"), nd), b.accept()],
            "builtin:icmpv6-nd",
        )
    )
    out.append(rc.commented(c, [b.vmap_lookup(rc.saddr(4), n.ZONE_MAP_V4)], "builtin:zones"))
    out.append(rc.commented(c, [b.vmap_lookup(rc.saddr(6), n.ZONE_MAP_V6)], "builtin:zones"))
    out.append(rc.commented(c, [b.goto(n.NOZONE_CHAIN)], "builtin:nozone"))
    return out


@functools.lru_cache(maxsize=rc.RULE_CACHE_SIZE)
def _tail(chain: str) -> Json:
    return rc.commented(chain, [b.goto(n.FINAL_CHAIN)], "builtin:default")


def _final_chain(st: Settings) -> list[Json]:
    action = st.default_policy
    exprs: list[Json] = []
    out: list[Json] = []
    if st.log_denied and action is not Action.ALLOW:
        out.append(rc.commented(n.FINAL_CHAIN, rc.log(f"afw {action} default "), "default:log"))
    if action is not Action.ALLOW:
        out.append(rc.denied_log(n.FINAL_CHAIN, [], "default"))
    exprs.append(b.named_counter(n.DEFAULT_COUNTER))
    out += [rc.commented(n.FINAL_CHAIN, [*exprs, *v], "default") for v in verdicts(action, None)]
    return out
