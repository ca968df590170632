"""One policy rule to the kernel rules of its own chain (layer L1, pure).

Owns: the translation of a `Rule` into the rules of chain `r_<name>` — per variant
(address family × protocol/ports × time-window piece): the rate-limit drop with its
per-source meter, the log, the detection log of a denial, the verdict with the rule's
counter — memoised on the rule's value, and the comment convention every kernel rule
follows (`<label> #<hash of its expressions>`). The zone chains that jump here and the
rest of the table are the compiler's (compiler.py).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass

from aitherfwd.nft import builders as b
from aitherfwd.nft import fwdlog, geo
from aitherfwd.nft import names as n
from aitherfwd.nft.shared import SharedSets
from aitherfwd.nft.verdicts import log_exprs, verdicts
from aitherfwd.policy.model import DAY_SECONDS, Action, Protocol, Rule, TimeWindow

Json = b.Json

RATELIMIT_SET_TIMEOUT = 60
RATELIMIT_SET_SIZE = 65_536
RULE_CACHE_SIZE = 8192  # policy rules whose compiled chain is kept for the next reload


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One policy rule, compiled: its kernel rules (for its chain `r_<name>`), the shared
    sets they use, its own per-source meters and their content hashes."""

    rules: tuple[Json, ...]
    shared: tuple[Json, ...]
    meters: tuple[Json, ...]
    hash_rules: tuple[Json, ...]


@functools.lru_cache(maxsize=RULE_CACHE_SIZE)
def compile_rule(
    rule: Rule, log_denied: bool = False, log_allowed: bool = False, *, forward: bool = False
) -> CompiledRule:
    """Memoised on the rule's value (and the settings it reads): the daemon recompiles the
    whole policy on every reload, and a rule equal to one compiled before gets the very same
    objects back, so an unchanged rule costs a lookup. The objects are shared between
    rulesets: never mutate. `log_denied`: a denying rule logs like `log: true`;
    `log_allowed`: an allowing rule reports its new connections to the daemon (decision
    records, bounded like the denials).

    `forward`: the rule's chain on the forward path (`f_<name>`), where destination ports
    are matched on the connection's original destination port (`ct original proto-dst`):
    the port the client asked for, before DNAT to a container's port. The per-source
    meters are the same sets on both paths (one bucket per rule and source)."""
    shared = SharedSets()
    chain = n.fwd_rule_chain(rule.name) if forward else n.rule_chain(rule.name)
    kernel_rules = tuple(_rule(chain, rule, shared, log_denied, log_allowed, forward=forward))
    rl = rule.rate_limit
    meters = []
    if rl is not None:
        meters = [
            b.set_(
                n.ratelimit_set(rule.name, fam, rl.rate, rl.burst),
                addr_type(fam),
                ["timeout"],
                timeout=RATELIMIT_SET_TIMEOUT,
                size=RATELIMIT_SET_SIZE,
            )
            for fam in (4, 6)
        ]
    hashes = set_hash_rules(meters)
    return CompiledRule(kernel_rules, tuple(shared.objects()), tuple(meters), tuple(hashes))


def set_hash_rules(objects: list[Json]) -> list[Json]:
    """A never-traversed rule per static set and map whose comment records its contents'
    hash (dynamic sets' elements are not the ruleset's)."""
    return [
        b.rule(n.SET_HASH_CHAIN, [b.ret()], f"{kind} {body['name']} #{digest([o])[:12]}")
        for o in objects
        for kind, body in o.items()
        if kind in ("set", "map") and body["name"] not in n.DYNAMIC_SET_NAMES
    ]


def digest(objects: list[Json]) -> str:
    text = json.dumps(objects, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def addr_type(family: int) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"


def saddr(family: int) -> Json:
    return b.payload("ip" if family == 4 else "ip6", "saddr")


def commented(chain: str, exprs: list[Json], label: str) -> Json:
    """Every kernel rule's comment names its policy rule plus a hash of its expressions, so
    a verdict traces back to the rule and `plan` can diff by comment alone. (`repr` of the
    builders' dicts is deterministic and three times cheaper than canonical JSON.)"""
    h = hashlib.sha256(repr(exprs).encode()).hexdigest()[:12]
    return b.rule(chain, exprs, f"{label} #{h}")


def detect_log(kind: str, rule: str = "-") -> list[Json]:
    return [
        b.limit(n.DETECT_LOG_RATE, "second", n.DETECT_LOG_RATE),
        b.log(n.detect_prefix(kind, rule), n.DETECT_GROUP),
    ]


def denied_log(chain: str, matches: list[Json], rule: str) -> Json:
    """A denied new connection, reported to the daemon's scan detector (no verdict here)."""
    new = b.match(b.ct("state"), ["new"], "in")
    return commented(chain, [*matches, new, *detect_log(n.KIND_DENIED, rule)], f"{rule}:detect")


def allowed_log(chain: str, matches: list[Json], rule: str) -> Json:
    """A new connection an allow rule lets in, reported for its decision record."""
    new = b.match(b.ct("state"), ["new"], "in")
    exprs = [*matches, new, *detect_log(n.KIND_ALLOWED, rule)]
    return commented(chain, exprs, f"{rule}:allowed")


def _rule(
    chain: str,
    rule: Rule,
    shared: SharedSets,
    log_denied: bool,
    log_allowed: bool,
    *,
    forward: bool = False,
) -> Iterator[Json]:
    """One policy rule's kernel rules, for its own chain: per variant, the rate-limit drop,
    the log, the detection log of a denial, then the verdict with the rule's counter."""
    for fam, proto, matches in _variants(rule, shared, forward):
        if rule.rate_limit and fam is not None:
            rl = rule.rate_limit
            meter = b.update_set(
                n.ratelimit_set(rule.name, fam, rl.rate, rl.burst),
                saddr(fam),
                b.limit(rl.rate, "second", rl.burst, over=True),
            )
            yield commented(
                chain,
                [*matches, meter, b.named_counter(n.ratelimit_counter(rule.name)), b.drop()],
                f"{rule.name}:ratelimit",
            )
        if rule.log or (log_denied and rule.action is not Action.ALLOW):
            # A rule of its own: the log's rate limit must never decide whether the verdict
            # below matches (past the limit, packets would fall through to later rules).
            yield commented(
                chain,
                [*matches, *log(f"afw {rule.action} {rule.name} ")],
                f"{rule.name}:log",
            )
        if forward:  # the published port in what the daemon reads (nft/fwdlog.py)
            yield from _forward_logs(chain, rule, proto, matches, log_allowed=log_allowed)
        elif rule.action is not Action.ALLOW:
            yield denied_log(chain, matches, rule.name)
        elif log_allowed:
            yield allowed_log(chain, matches, rule.name)
        for verdict in verdicts(rule.action, proto):
            head = verdict[:-1]
            yield commented(
                chain,
                [*matches, *head, b.named_counter(n.rule_counter(rule.name)), verdict[-1]],
                rule.name,
            )


def _forward_logs(
    chain: str,
    rule: Rule,
    proto: Protocol | None,
    matches: list[Json],
    *,
    log_allowed: bool,
) -> Iterator[Json]:
    if rule.action is not Action.ALLOW:
        kind, label = n.KIND_DENIED, f"{rule.name}:detect"
    elif log_allowed:
        kind, label = n.KIND_ALLOWED, f"{rule.name}:allowed"
    else:
        return
    if rule.protocol is Protocol.ICMP:  # no ports to report
        new = b.match(b.ct("state"), ["new"], "in")
        yield commented(chain, [*matches, new, *detect_log(kind, rule.name)], label)
        return
    for exprs in fwdlog.detect_exprs(matches, kind, rule.name, proto):
        yield commented(chain, exprs, label)


def _variants(
    rule: Rule, shared: SharedSets, forward: bool = False
) -> Iterator[tuple[int | None, Protocol | None, list[Json]]]:
    """The cross product of address family × protocol/ports × time-window pieces."""
    families: list[int | None] = [*sorted({c.version for c in rule.source_cidrs})] or [None]
    if (rule.rate_limit or rule.source_countries or rule.source_lists) and families == [None]:
        families = [4, 6]  # the per-source meter and the country/list sets are per family
    for fam in families:
        base: list[Json] = []
        if fam is not None and rule.source_cidrs:
            # collapsed: overlapping intervals in one set are refused by the kernel
            nets = list(
                ipaddress.collapse_addresses(  # type: ignore[type-var]
                    c for c in rule.source_cidrs if c.version == fam
                )
            )
            base.append(b.match(saddr(fam), shared.prefixes(fam, tuple(nets))))
        elif fam is not None:
            base.append(b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6"))
        sources = list(geo.rule_matches(rule, fam)) if fam is not None else [[]]
        for source in sources:
            for proto, port_exprs in _protocols(rule, shared, forward):
                for window in _windows(rule.time_window):
                    yield fam, proto, [*base, *source, *port_exprs, *window]


def _protocols(
    rule: Rule, shared: SharedSets, forward: bool = False
) -> Iterator[tuple[Protocol | None, list[Json]]]:
    if rule.ports:
        for pm in rule.ports:
            ports = shared.ports(pm.ranges)
            if forward:  # the published port, whatever container port DNAT chose
                l4 = b.match(b.meta("l4proto"), str(pm.protocol))
                yield pm.protocol, [l4, b.match(b.ct_original("proto-dst"), ports)]
            else:
                yield pm.protocol, [b.match(b.payload(str(pm.protocol), "dport"), ports)]
    elif rule.protocol is Protocol.ICMP:
        icmp = shared.constant("proto", "inet_proto", ("icmp", "ipv6-icmp"))
        yield None, [b.match(b.meta("l4proto"), icmp)]
    elif rule.protocol in (Protocol.TCP, Protocol.UDP):
        yield rule.protocol, [b.match(b.meta("l4proto"), str(rule.protocol))]
    else:
        yield None, []


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
            # anonymous: nft 1.0.6 lists a named set of `type day` in text it cannot parse
            exprs.append(b.match(b.meta("day"), b.anon_set(sorted(days))))
        exprs.append(b.match(b.meta("hour"), b.range_(start, end - 1)))
        yield exprs


def log(prefix: str) -> list[Json]:
    return log_exprs(prefix, n.LOG_GROUP)
