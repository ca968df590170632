"""The output chain of table `inet aitherfwd` (layer L1, pure).

Owns: compiling the `egress:` and `sandbox:` sections into the kernel's outbound path, in
seed 001's order: loopback (and ICMPv6 neighbour discovery) · DNS to the resolvers ·
established/related · known_bad (drop; wins over everything below, sandbox grants
included) · named rules in order · known_good · allowlist (resolved-domain sets and IPs,
constrained by its ports) · sandbox grants (hash and prefix sets, constrained by
sandbox.allowed_ports; per-grant ports in the address . port sets) · (rate-limited log) ·
default verdict. Emitted only when the policy
has an `egress:` section; without one, outbound is not filtered. Deterministic.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator

from aitherfwd.egress import names as en
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.nft.verdicts import log_exprs, verdicts
from aitherfwd.policy.model import Action, Egress, IPNetwork, Policy, PortRange, Protocol

Json = b.Json
FAMILIES = (4, 6)
ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]


def egress_objects(policy: Policy) -> list[Json]:
    """Counters, sets, the output chain and its rules; [] without an `egress:` section."""
    eg = policy.egress
    if eg is None:
        return []
    counters = [
        en.COUNTER_DEFAULT,
        en.COUNTER_KNOWN_BAD,
        en.COUNTER_KNOWN_GOOD,
        en.COUNTER_ALLOWLIST,
        en.COUNTER_SANDBOX,
        en.COUNTER_DNS,
        *(en.rule_counter(r.name) for r in eg.rules),
    ]
    out: list[Json] = [b.counter(c) for c in sorted(counters)]
    bases = sorted({base for bases in eg.hosts().values() for base in bases} | {en.DOMAIN_BASE})
    for base in bases:
        for fam in FAMILIES:
            out.append(b.set_(en.domain_set(base, fam), en.addr_type(fam), ["timeout"]))
    for fam in FAMILIES:
        # interval: a grant's destination may be a prefix (address . port ranges, pipapo)
        out.append(
            b.set_(en.PORT_SETS[fam], [en.addr_type(fam), "inet_service"], ["interval", "timeout"])
        )
    out.append(b.chain(en.OUTPUT_CHAIN, hook="output", prio=0, policy="accept"))
    out += list(_rules(policy, eg))
    return out


def _rules(policy: Policy, eg: Egress) -> Iterator[Json]:
    yield from _head(policy, eg)
    yield from _named(policy, eg)
    yield from _allowed(eg)
    yield from _sandbox(policy)
    action = eg.default_action
    if policy.settings.log_denied and action is not Action.ALLOW:
        yield _rule(_log_exprs(f"afwd {n.KIND_EGRESS} default"), "egress-default:log")
    for verdict in verdicts(action, None):
        yield _rule([b.named_counter(en.COUNTER_DEFAULT), *verdict], "egress-default")


def _head(policy: Policy, eg: Egress) -> Iterator[Json]:
    """Loopback, DNS to the resolvers, established/related, known_bad."""
    yield _rule([b.match(b.meta("oif"), "lo"), b.accept()], en.RULE_LOOPBACK)
    nd = b.match(b.payload("icmpv6", "type"), {"set": ND_TYPES})
    yield _rule([nd, b.accept()], "builtin:icmpv6-nd")  # IPv6 needs neighbour discovery
    dns = _ports(Protocol.ANY, (PortRange(53, 53),))
    for fam in FAMILIES:
        resolvers = [ipaddress.ip_network(a) for a in eg.resolvers if a.version == fam]
        if resolvers:
            exprs = [_daddr_in(fam, resolvers), *dns, b.named_counter(en.COUNTER_DNS), b.accept()]
            yield _rule(exprs, en.RULE_DNS)
    yield _rule(
        [b.match(b.ct("state"), ["established", "related"], "in"), b.accept()],
        "builtin:established",
    )
    for fam in FAMILIES:
        bad = [x for x in eg.known_bad if x.version == fam]
        if bad:
            dest = _daddr_in(fam, bad)
            yield from _logged(policy, Action.DENY, en.RULE_KNOWN_BAD, [dest])
            exprs = [dest, b.named_counter(en.COUNTER_KNOWN_BAD), b.drop()]
            yield _rule(exprs, en.RULE_KNOWN_BAD)


def _named(policy: Policy, eg: Egress) -> Iterator[Json]:
    for r in eg.rules:
        for fam in FAMILIES:
            if r.host is not None:
                dest = b.in_set(_daddr(fam), en.domain_set(en.rule_base(r.name), fam))
            else:
                nets = [x for x in r.destinations if x.version == fam]
                if not nets:
                    continue
                dest = _daddr_in(fam, nets)
            match = [dest, *_ports(r.protocol, r.ports)]
            if r.log:
                yield from _logged(policy, r.action, r.name, match)
            for verdict in verdicts(r.action, r.protocol):
                counter = b.named_counter(en.rule_counter(r.name))
                yield _rule([*match, *verdict[:-1], counter, verdict[-1]], r.name)


def _allowed(eg: Egress) -> Iterator[Json]:
    """known_good, then the allowlist (resolved domains and IPs, within its ports)."""
    for fam in FAMILIES:
        good = [x for x in eg.known_good if x.version == fam]
        if good:
            yield _rule(
                [_daddr_in(fam, good), b.named_counter(en.COUNTER_KNOWN_GOOD), b.accept()],
                en.RULE_KNOWN_GOOD,
            )
    allow = [b.named_counter(en.COUNTER_ALLOWLIST), b.accept()]
    ports = _ports(Protocol.ANY, eg.allow_ports)
    for fam in FAMILIES:
        dom = b.in_set(_daddr(fam), en.domain_set(en.DOMAIN_BASE, fam))
        yield _rule([dom, *ports, *allow], en.RULE_ALLOWLIST)
        ips = [x for x in eg.allow_ips if x.version == fam]
        if ips:
            yield _rule([_daddr_in(fam, ips), *ports, *allow], en.RULE_ALLOWLIST)


def _sandbox(policy: Policy) -> Iterator[Json]:
    grant = [b.named_counter(en.COUNTER_SANDBOX), b.accept()]
    sandbox_ports = _ports(Protocol.ANY, policy.sandbox.allowed_ports)
    for fam in FAMILIES:
        for name in (en.SANDBOX_HASH[fam], en.SANDBOX_NET[fam]):
            yield _rule([b.in_set(_daddr(fam), name), *sandbox_ports, *grant], en.RULE_SANDBOX)
        pair = {"concat": [_daddr(fam), b.payload("th", "dport")]}
        tcp_udp = b.match(b.meta("l4proto"), {"set": ["tcp", "udp"]})
        yield _rule([tcp_udp, b.in_set(pair, en.PORT_SETS[fam]), *grant], en.RULE_SANDBOX)


def _rule(exprs: list[Json], label: str) -> Json:
    """Comment: the deciding rule plus a hash of the expressions (as the input chain)."""
    h = hashlib.sha256(repr(exprs).encode()).hexdigest()[:12]
    return b.rule(en.OUTPUT_CHAIN, exprs, f"egress:{label} #{h}")


def _daddr(family: int) -> Json:
    return b.payload("ip" if family == 4 else "ip6", "daddr")


def _daddr_in(family: int, nets: Iterable[IPNetwork]) -> Json:
    collapsed = ipaddress.collapse_addresses(nets)  # type: ignore[type-var]
    values = [
        str(x.network_address)
        if x.prefixlen == x.max_prefixlen
        else b.prefix(str(x.network_address), x.prefixlen)
        for x in collapsed
    ]
    return b.match(_daddr(family), b.anon_set(values))


def _ports(proto: Protocol, ports: tuple[PortRange, ...]) -> list[Json]:
    if proto is Protocol.ICMP:
        return [b.match(b.meta("l4proto"), {"set": ["icmp", "ipv6-icmp"]})]
    if not ports:
        if proto in (Protocol.TCP, Protocol.UDP):
            return [b.match(b.meta("l4proto"), str(proto))]
        return []
    values = b.anon_set([p.lo if p.lo == p.hi else b.range_(p.lo, p.hi) for p in ports])
    if proto in (Protocol.TCP, Protocol.UDP):
        return [b.match(b.payload(str(proto), "dport"), values)]
    return [
        b.match(b.meta("l4proto"), {"set": ["tcp", "udp"]}),
        b.match(b.payload("th", "dport"), values),
    ]


def _logged(policy: Policy, action: Action, rule: str, match: list[Json]) -> Iterator[Json]:
    """The rate-limited log of a denying rule, in a rule of its own: past the log's limit
    the packet must still meet the verdict below, never fall through to later rules."""
    if action is not Action.ALLOW and policy.settings.log_denied:
        yield _rule([*match, *_log_exprs(f"afwd {n.KIND_EGRESS} {rule}")], f"{rule}:log")


def _log_exprs(prefix: str) -> list[Json]:
    """To the group the daemon reads (daemon/detection.py), which audits each report."""
    return log_exprs(prefix, n.DETECT_GROUP)
