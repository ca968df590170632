"""The forward path of table `inet aitherfwd`: routed traffic to and from containers
(layer L1, pure).

Owns: the `forward` base chain and what hangs off it, compiled from the same policy as the
input path, emitted only when a zone holds containers (`containers: true`; a zone named
`docker` does by default):

    forward (hook forward, priority FORWARD_PRIORITY = -10, policy accept):
        saddr in block sets drop · ct established,related accept · ct invalid drop ·
        ICMPv6 neighbour discovery accept (bridged between containers) ·
        daddr in a container zone → goto fwd_in · saddr in a container zone → goto fwd_out
        (the container zones' addresses: a content-named shared set, nft/shared.py) ·
        anything else routed through the host: not ours to judge (policy accept)
    fwd_in:   the country/list drop stage (nft/geo.py) · per-source SYN and connection
              limits (the input path's meters; refusals go to fsynflood, fconnlimit) ·
              list zones (goto fzone_<zone>) ·
              ip saddr vmap @fzone_v4 · ip6 saddr vmap @fzone_v6 · goto fnozone
    fzone_X:  jump f_<rule> for each rule of zone X that applies to containers · goto ffinal
    f_<rule>: the rule's kernel rules with its ports matched on `ct original proto-dst`
              (the published port the client asked for, not the container port DNAT chose);
              its detection logs report that port too (nft/fwdlog.py)
    ffinal:   the default verdict, as `final` (same counter), logging the published port
    fsynflood, fconnlimit: fwd_in's limit refusals, as `synflood` and `connlimit`
    fwd_out:  the egress rules of the output chain (egress/chain.py), or the
              `egress_default_policy` verdict when the policy has no `egress:` section

Container to container is inbound to containers (the destination is in a container zone)
with the source container's zone. Must not import the compiler (it imports this).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aitherfwd import zones as zoning
from aitherfwd.egress import names as en
from aitherfwd.nft import builders as b
from aitherfwd.nft import fwdlog, geo
from aitherfwd.nft import names as n
from aitherfwd.nft import rulechain as rc
from aitherfwd.nft.shared import SharedSets
from aitherfwd.nft.verdicts import log_exprs, verdicts
from aitherfwd.policy.model import Action, AppliesTo, IPAddress, Policy, Rule

Json = b.Json
FAMILIES = (4, 6)
ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]


@dataclass(frozen=True, slots=True)
class ForwardPart:
    """The forward path's objects, in the compiler's dependency order."""

    compiled: tuple[rc.CompiledRule, ...]  # f_<rule> chains' rules, shared sets, meters
    # (the compiler emits them with the input path's compiled rules)
    chains: tuple[Json, ...]  # chains, then the maps that name them
    rules: tuple[Json, ...]  # the rules of forward, fwd_in and the zone chains (not f_<rule>)
    out_rules: tuple[Json, ...]  # fwd_out (after the egress objects it refers to)
    hash_rules: tuple[Json, ...]


def container_zones(policy: Policy) -> list[str]:
    return [z.name for z in policy.zones if z.containers]


def for_host(rule: Rule) -> bool:
    return rule.applies_to is not AppliesTo.CONTAINERS


def for_containers(rule: Rule) -> bool:
    return rule.applies_to is not AppliesTo.HOST


def forward_part(
    policy: Policy,
    rules: list[Rule],
    limits: Callable[[str], list[Json]],
    egress: list[Json],
    shared: SharedSets,
) -> ForwardPart | None:
    """None when no zone holds containers (the table then has no forward hook at all).
    `rules`: the policy's kernel rules; `limits(chain)`: the input path's per-source limit
    rules for `chain`; `egress`: the output chain's objects (egress/chain.py)."""
    czones = container_zones(policy)
    if not czones:
        return None
    mine = [r for r in rules if for_containers(r)]
    st = policy.settings
    compiled = tuple(rc.compile_rule(r, st.log_denied, st.log_allowed, forward=True) for r in mine)
    zone_names = [z.name for z in policy.zones]
    maps = _maps(policy)
    containers = _containers(policy, czones, shared)
    chains = [b.chain(n.FORWARD_CHAIN, hook="forward", prio=n.FORWARD_PRIORITY, policy="accept")]
    chains += [
        b.chain(c) for c in (n.FWD_IN_CHAIN, n.FWD_OUT_CHAIN, n.FWD_NOZONE_CHAIN, n.FWD_FINAL_CHAIN)
    ]
    chains += [b.chain(c) for c in (n.FWD_SYNFLOOD_CHAIN, n.FWD_CONNLIMIT_CHAIN)]
    chains += [b.chain(n.fwd_zone_chain(z)) for z in zone_names]
    chains += [b.chain(n.fwd_rule_chain(r.name)) for r in mine]
    body = _forward_chain(containers)
    body += [rc.commented(n.FWD_IN_CHAIN, e, label) for e, label in geo.drop_stage(policy)]
    body += limits(n.FWD_IN_CHAIN)
    listzones = geo.zone_dispatch(policy, n.fwd_zone_chain)
    body += [rc.commented(n.FWD_IN_CHAIN, e, label) for e, label in listzones]
    body += _zones_dispatch()
    for zone in zone_names:
        body += _dispatch(
            n.fwd_zone_chain(zone), [r for r in mine if r.zones is None or zone in r.zones]
        )
    body += _dispatch(n.FWD_NOZONE_CHAIN, [r for r in mine if r.zones is None])
    body += [rc.commented(n.FWD_FINAL_CHAIN, e, label) for e, label in fwdlog.final_chain(st)]
    body += [rc.commented(c, e, label) for c, e, label in fwdlog.limit_chains()]
    return ForwardPart(
        compiled,
        (*chains, *maps),
        tuple(body),
        tuple(_out_chain(policy, egress)),
        tuple(rc.set_hash_rules(maps)),
    )


def _interval(first: IPAddress, last: IPAddress) -> Json:
    net = zoning.as_prefix(first, last)
    if net is not None:
        return b.prefix(str(net.network_address), net.prefixlen)
    return b.range_(str(first), str(last))


def _maps(policy: Policy) -> list[Json]:
    """`fzone_v4/v6`: the zone partition, each piece to its forward zone chain."""
    maps = []
    for fam, map_name in ((4, n.FWD_ZONE_MAP_V4), (6, n.FWD_ZONE_MAP_V6)):
        pieces = zoning.partition(policy.zones, fam)
        elements = [[_interval(lo, hi), b.goto(n.fwd_zone_chain(z))] for lo, hi, z in pieces]
        maps.append(b.vmap_(map_name, rc.addr_type(fam), elements))
    return maps


def _containers(policy: Policy, czones: list[str], shared: SharedSets) -> dict[int, Any]:
    """Per IP version that has some: the addresses whose FIRST zone holds containers, as
    the right-hand side of a match — a content-named shared set (a changed zone is a new
    set and a changed forward chain, which a delta reload replaces together)."""
    out = {}
    for fam in FAMILIES:
        nets = [
            net
            for lo, hi, z in zoning.partition(policy.zones, fam)
            if z in czones
            for net in ipaddress.summarize_address_range(lo, hi)
        ]
        if nets:
            collapsed = ipaddress.collapse_addresses(nets)  # type: ignore[type-var]
            out[fam] = shared.prefixes(fam, tuple(collapsed))
    return out


def _fam(addr_type: str) -> int:
    return 4 if addr_type == "ipv4_addr" else 6


def _daddr(fam: int) -> Json:
    return b.payload("ip" if fam == 4 else "ip6", "daddr")


def _forward_chain(containers: dict[int, Any]) -> list[Json]:
    c = n.FORWARD_CHAIN
    blocked = [b.named_counter(n.BLOCKED_COUNTER), b.drop()]
    out = [
        rc.commented(c, [b.in_set(rc.saddr(_fam(s.type)), s.name), *blocked], "builtin:blocked")
        for s in n.BLOCK_SETS
    ]
    established = b.match(b.ct("state"), ["established", "related"], "in")
    out.append(rc.commented(c, [established, b.accept()], "builtin:established"))
    invalid = b.match(b.ct("state"), ["invalid"], "in")
    out.append(
        rc.commented(c, [invalid, b.named_counter(n.INVALID_COUNTER), b.drop()], "builtin:invalid")
    )
    # bridged neighbour discovery between containers passes here too (br_netfilter)
    nd = b.match(b.payload("icmpv6", "type"), {"set": ND_TYPES})
    out.append(rc.commented(c, [nd, b.accept()], "builtin:icmpv6-nd"))
    for key, target, label in ((_daddr, n.FWD_IN_CHAIN, "to"), (rc.saddr, n.FWD_OUT_CHAIN, "from")):
        for fam, addresses in sorted(containers.items()):
            exprs = [b.match(key(fam), addresses), b.goto(target)]
            out.append(rc.commented(c, exprs, f"builtin:{label}-containers"))
    return out


def _zones_dispatch() -> list[Json]:
    c = n.FWD_IN_CHAIN
    return [
        rc.commented(c, [b.vmap_lookup(rc.saddr(4), n.FWD_ZONE_MAP_V4)], "builtin:zones"),
        rc.commented(c, [b.vmap_lookup(rc.saddr(6), n.FWD_ZONE_MAP_V6)], "builtin:zones"),
        rc.commented(c, [b.goto(n.FWD_NOZONE_CHAIN)], "builtin:nozone"),
    ]


def _dispatch(chain: str, rules: list[Rule]) -> list[Json]:
    out = [rc.commented(chain, [b.jump(n.fwd_rule_chain(r.name))], r.name) for r in rules]
    out.append(rc.commented(chain, [b.goto(n.FWD_FINAL_CHAIN)], "builtin:default"))
    return out


def _out_chain(policy: Policy, egress: list[Json]) -> list[Json]:
    """Outbound from containers: the host's egress rules, the very same expressions (their
    sets, counters and sandbox grants are shared), in chain fwd_out."""
    if policy.egress is not None:
        return [
            {"rule": {**o["rule"], "chain": n.FWD_OUT_CHAIN}}
            for o in egress
            if "rule" in o and o["rule"]["chain"] == en.OUTPUT_CHAIN
        ]
    action = policy.settings.egress_default_policy
    out = []
    if policy.settings.log_denied and action is not Action.ALLOW:
        prefix = f"afwd {n.KIND_EGRESS} default"
        out.append(
            rc.commented(n.FWD_OUT_CHAIN, log_exprs(prefix, n.DETECT_GROUP), "egress-default:log")
        )
    out += [rc.commented(n.FWD_OUT_CHAIN, v, "egress-default") for v in verdicts(action, None)]
    return out
