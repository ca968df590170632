"""Would this connection pass, and which rule decides? (layer L1, pure)

Owns: `Request`, `Verdict`, `Blocked` (the view of the live block table it needs),
`TokenBuckets` (re-exported from `dynamic.buckets`) and `Evaluator`, which answers
with exactly the semantics of the ruleset `compiler` builds for a new inbound connection:
loopback accept, block sets drop, the source's first zone, the first matching rule in
policy order (of the rules that apply to the host), the default verdict. `forward`: a
connection routed through the host, judged as the forward chain does (`_forward`). Rules
with layer-7 conditions are not in the kernel: here they match only requests that carry
those fields. Not modelled: established/related
packets (a request is a new connection) and ICMPv6 neighbour discovery (a request has no
ICMP type).

The index (evalindex.py) gives the candidate rules of a source and a port as a bit mask
over policy order; the lowest set bit is the first candidate, and only time windows,
countries, lists and layer-7 fields are checked per candidate.

Time is an argument. Must not import adapters, the daemon, or anything that does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import typing
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from aitherfwd.dynamic.buckets import TokenBuckets
from aitherfwd.egress.verdict import EgressState, outbound
from aitherfwd.evalindex import address_index, bits, port_index, portless, source_steps
from aitherfwd.forwarding import ForwardPaths, Path
from aitherfwd.nft.forward import for_containers, for_host
from aitherfwd.policy.model import (
    DAY_SECONDS,
    PORT_PROTOCOLS,
    Action,
    IPAddress,
    Policy,
    Protocol,
    Rule,
    Settings,
)
from aitherfwd.policy.timezones import contains_at

INBOUND = "inbound"
OUTBOUND = "outbound"
FORWARD = "forward"  # routed through the host (containers): see evaluate_forward
DIRECTIONS = (INBOUND, OUTBOUND, FORWARD)
REQUEST_PROTOCOLS = (Protocol.TCP, Protocol.UDP, Protocol.ICMP)
RATE_LIMITED = "rate_limited"

Origin = tuple[str | None, tuple[str, ...]]  # the source's country and lists
_VERBS = {Action.ALLOW: "allows", Action.DENY: "denies", Action.REJECT: "rejects"}


@dataclass(frozen=True, slots=True)
class Request:
    """A new connection to judge. `dest_port` is required for tcp/udp, absent for icmp."""

    source: IPAddress
    protocol: Protocol
    dest_port: int | None = None
    direction: str = INBOUND
    dest: IPAddress | None = None
    path: str | None = None  # layer 7
    authenticated: bool | None = None  # layer 7

    def __post_init__(self) -> None:
        if self.protocol not in REQUEST_PROTOCOLS:
            raise ValueError(f"protocol must be tcp, udp or icmp, not {self.protocol}")
        if self.protocol is Protocol.ICMP:
            if self.dest_port is not None:
                raise ValueError("icmp has no destination port")
        elif self.dest_port is None or not 1 <= self.dest_port <= 65535:
            raise ValueError(f"{self.protocol} needs a dest_port 1-65535")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be inbound, outbound or forward, not {self.direction!r}"
            )
        if self.direction == FORWARD and self.dest is None:
            raise ValueError("forward needs a destination address (after DNAT)")


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str  # "allow" | "deny" | "reject" | "rate_limited"
    rule: str | None  # the deciding rule; None for builtins and the default policy
    zone: str | None  # the source's zone (inbound)
    reason: str
    country: str | None = None  # the source's country, when a geoip database is loaded
    lists: tuple[str, ...] = ()  # the prefix lists the source is in


class GeoLookup(typing.Protocol):
    """The country and list contents the kernel holds (daemon/geosets.py fits)."""

    def country_of(self, address: IPAddress) -> str | None: ...

    def lists_of(self, address: IPAddress) -> tuple[str, ...]: ...


class Blocked(typing.Protocol):
    """The caller's live block table (`dynamic.blocks.BlockTable` fits)."""

    def lookup(self, address: IPAddress, now: float) -> tuple[float | None, str] | None:
        """(expires_at, or None when permanent; reason) if `address` is blocked at `now`."""


class Evaluator:
    """The compiled policy's verdicts, answered in process. Build once per policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rules = policy.rules
        self._addresses = {v: address_index(policy, v) for v in (4, 6)}
        self._ports = {p: port_index(policy.rules, p) for p in PORT_PROTOCOLS}
        self._icmp = bits(i for i, r in enumerate(policy.rules) if portless(r, Protocol.ICMP))
        self._conditional = bits(i for i, r in enumerate(policy.rules) if _conditional(r))
        # which rules each path holds (applies_to): the input chains' and the forward path's
        self._paths = ForwardPaths(policy)
        self._host = bits(i for i, r in enumerate(policy.rules) if for_host(r))
        self._containers = bits(i for i, r in enumerate(policy.rules) if for_containers(r))
        # list zones come before the CIDR zones (nft/geo.py): their rules, by zone
        self._sources = {v: source_steps(policy.rules, v) for v in (4, 6)}
        self._list_zones = [
            (
                z.name,
                z.list,
                bits(i for i, r in enumerate(policy.rules) if r.zones is None or z.name in r.zones),
            )
            for z in policy.zones
            if z.list is not None
        ]

    def evaluate(
        self,
        req: Request,
        now: float,
        blocked: Blocked | None = None,
        buckets: TokenBuckets | None = None,
        egress: EgressState | None = None,
        *,
        geo: GeoLookup | None = None,
    ) -> Verdict:
        source = normalise(req.source)
        if req.direction == OUTBOUND:
            if req.dest is None or self.policy.egress is None:
                return egress_verdict(self.policy.settings)
            o = outbound(
                self.policy,
                normalise(req.dest),
                protocol=req.protocol,
                port=req.dest_port,
                now=now,
                state=egress,
            )
            return Verdict(o.action, o.rule, None, o.reason)
        zone, _ = self._addresses[source.version].at(int(source))
        if req.direction == FORWARD:
            return self._forward(
                req, zone, now, blocked=blocked, buckets=buckets, egress=egress, geo=geo
            )
        if source.is_loopback:
            return Verdict(str(Action.ALLOW), None, zone, "loopback is always allowed")
        block = blocked.lookup(source, now) if blocked is not None else None
        if block is not None:
            return Verdict(str(Action.DENY), None, zone, _blocked_reason(*block))
        return self.judge_rules(req, source, now, buckets, containers=False, geo=geo)

    def _forward(
        self,
        req: Request,
        zone: str | None,
        now: float,
        *,
        blocked: Blocked | None,
        buckets: TokenBuckets | None,
        egress: EgressState | None,
        geo: GeoLookup | None = None,
    ) -> Verdict:
        """Routed through the host, as the forward chain judges it (nft/forward.py):
        blocked sources drop, then to containers, from containers, or not judged."""
        source, dest = normalise(req.source), normalise(req.dest or req.source)
        block = blocked.lookup(source, now) if blocked is not None else None
        if block is not None:
            return Verdict(str(Action.DENY), None, zone, _blocked_reason(*block))
        path = self._paths.path(source, dest)
        if path is Path.TO:
            return self.judge_rules(req, source, now, buckets, containers=True, geo=geo)
        if path is None:
            return Verdict("allow", None, zone, "routed, not to or from a container zone")
        out = self.evaluate(replace(req, direction=OUTBOUND), now, egress=egress)
        return Verdict(out.verdict, out.rule, zone, f"from containers: {out.reason}")

    def judge_rules(
        self,
        req: Request,
        source: IPAddress,
        now: float,
        buckets: TokenBuckets | None,
        *,
        containers: bool,
        geo: GeoLookup | None = None,
    ) -> Verdict:
        """The zone, rules and default verdict for a new connection from `source`: to the
        host's own ports, or (`containers`) to a container behind a published port, with
        the rules of that path (applies_to) and `req.dest_port` the published port."""
        zone, sources = self._addresses[source.version].at(int(source))
        origin = (geo.country_of(source), geo.lists_of(source)) if geo is not None else (None, ())
        # the drop stage and list zones: the input chain's and fwd_in's alike (nft/geo.py)
        stage = _geo_stage(self.policy, *origin)
        if stage is not None:
            return Verdict(str(Action.DENY), None, zone, stage, *origin)
        for name, plist, mask in self._list_zones:
            if plist in origin[1]:
                zone, sources = name, mask & self._sources[source.version].at(int(source))
                break
        sources &= self._containers if containers else self._host
        index = self._rule_index(req, sources, now, origin)
        if index is None:
            action = self.policy.settings.default_policy
            verdict = Verdict(str(action), None, zone, f"no rule matched; default policy {action}")
        else:
            rule = self._rules[index]
            verdict = _decide(rule, req, source, zone, now=now, buckets=buckets)
        return replace(verdict, country=origin[0], lists=origin[1])

    def _rule_index(
        self, req: Request, sources: int, now: float, origin: Origin = (None, ())
    ) -> int | None:
        """The first rule in policy order that matches, by its index."""
        if req.dest_port is None:
            candidates = sources & self._icmp
        else:
            candidates = sources & self._ports[req.protocol].at(req.dest_port)
        clock: tuple[int, int] | None = None
        while candidates:
            lowest = candidates & -candidates
            i = lowest.bit_length() - 1
            if not lowest & self._conditional:
                return i
            clock = clock or _weekday_and_second(now)
            if _conditions_hold(self._rules[i], req, clock, now, origin):
                return i
            candidates ^= lowest
        return None


def normalise(address: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` is the IPv4 address a.b.c.d; anything else is itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def egress_verdict(settings: Settings) -> Verdict:
    """Outbound connections: no egress rules exist yet, so the egress default decides."""
    action = settings.egress_default_policy
    return Verdict(
        str(action), None, None, f"outbound: no egress rules; egress default policy {action}"
    )


def _weekday_and_second(now: float) -> tuple[int, int]:
    """nftables' `meta day` (Sunday = 0) and `meta hour` (seconds since midnight), in UTC."""
    whole = math.floor(now)
    return (whole // DAY_SECONDS + 4) % 7, whole % DAY_SECONDS  # 1970-01-01 was a Thursday


def _conditions_hold(
    rule: Rule, req: Request, clock: tuple[int, int], now: float, origin: Origin = (None, ())
) -> bool:
    """The conditions the index leaves out: time window (on its zone's clock), country and
    list, layer-7 fields."""
    if rule.source_countries and origin[0] not in rule.source_countries:
        return False
    if rule.source_lists and not set(rule.source_lists) & set(origin[1]):
        return False
    w = rule.time_window
    if w is not None and not (w.contains(*clock) if w.tz is None else contains_at(w, now)):
        return False
    if rule.path_prefix is not None and (
        req.path is None or not req.path.startswith(rule.path_prefix)
    ):
        return False
    return rule.authenticated is None or req.authenticated == rule.authenticated


def _decide(
    rule: Rule,
    req: Request,
    source: IPAddress,
    zone: str | None,
    *,
    now: float,
    buckets: TokenBuckets | None,
) -> Verdict:
    what = f"{req.protocol}/{req.dest_port}" if req.dest_port is not None else str(req.protocol)
    origin = f"zone {zone}" if zone is not None else f"{source} (in no zone)"
    limit = rule.rate_limit
    key = (rule.name, str(source))  # the kernel meters per rule and source address
    if limit and buckets is not None and not buckets.take(key, limit.rate, limit.burst, now):
        return Verdict(
            RATE_LIMITED,
            rule.name,
            zone,
            f"rule '{rule.name}' rate limit exceeded: over {limit.rate}/s "
            f"(burst {limit.burst}) for {what} from {source}",
        )
    reason = f"rule '{rule.name}' {_VERBS[rule.action]} {what} from {origin}"
    return Verdict(str(rule.action), rule.name, zone, reason)


def _blocked_reason(expires_at: float | None, why: str) -> str:
    if expires_at is None:
        text = "blocked permanently"
    else:
        stamp = datetime.fromtimestamp(expires_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"blocked until {stamp}"
    return f"{text}: {why}" if why else text


def _geo_stage(policy: Policy, country: str | None, lists: tuple[str, ...]) -> str | None:
    """The drop stage before the rules: a blocked country, a deny list (nft/geo.py)."""
    if country is not None and policy.geoip and country in policy.geoip.block_countries:
        return f"country {country} is blocked (geoip.block_countries)"
    for plist in policy.lists:
        if plist.action == "deny" and plist.name in lists:
            return f"source is in list '{plist.name}' (action deny)"
    return None


def _conditional(rule: Rule) -> bool:
    return (
        bool(rule.source_countries or rule.source_lists)
        or rule.time_window is not None
        or rule.path_prefix is not None
        or rule.authenticated is not None
    )
