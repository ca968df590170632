"""Country and list sets in the ruleset (layer L1, pure).

Owns: the names of the interval sets that hold a country's or a list's prefixes
(`geo_blocked_v4/v6`: the union of the blocked countries; `geo_<cc>_v4/v6` for the
countries rules name; `list_<name>_v4/v6`), their declarations
(empty: the daemon fills them through the netlink element writer, never through the
ruleset, and a reload keeps them and their elements because their declaration does not
change), the drop stage of the input chain and of the forward path's `fwd_in` (blocked
countries and `deny` lists, right after the block sets, before any rule), the dispatch of
list zones (before the CIDR zone map: a source in a list zone's list belongs to that
zone), and a rule's country and list matches (one set lookup each; several countries are
several kernel rules of the rule's chain, never a chain per country).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Policy, Rule

Json = b.Json
GEO_PREFIX = "geo_"
BLOCKED = "geo_blocked"  # not a country code: those are two letters
LIST_PREFIX = "list_"
COUNTRY_COUNTER = "country_blocked"
LIST_COUNTER = "list_blocked"


def country_set(code: str, family: int) -> str:
    return f"{GEO_PREFIX}{code.lower()}_v{family}"


def list_set(name: str, family: int) -> str:
    return f"{LIST_PREFIX}{name}_v{family}"


def _saddr(family: int) -> Json:
    return b.payload("ip" if family == 4 else "ip6", "saddr")


def blocked_set(family: int) -> str:
    """The union of every blocked country's ranges: one lookup per new connection however
    many countries are blocked (400 rules for 200 countries cost 27% of the new-connection
    rate, docs/benchmarks-geo.md)."""
    return f"{BLOCKED}_v{family}"


def countries(policy: Policy) -> list[str]:
    """Every country whose ranges the daemon reads, sorted."""
    used = set(policy.geoip.block_countries) if policy.geoip else set()
    return sorted(used | set(rule_countries(policy)))


def rule_countries(policy: Policy) -> list[str]:
    """The countries rules match: each has sets of its own."""
    return sorted({c for rule in policy.rules for c in rule.source_countries})


def wanted(policy: Policy) -> dict[str, tuple[str, str, int]]:
    """Set name -> (kind "country" | "blocked" | "list", code or list name, family)."""
    out: dict[str, tuple[str, str, int]] = {}
    blocked = policy.geoip.block_countries if policy.geoip else ()
    for fam in (4, 6):
        if blocked:
            out[blocked_set(fam)] = ("blocked", ",".join(blocked), fam)
        for code in rule_countries(policy):
            out[country_set(code, fam)] = ("country", code, fam)
        for plist in policy.lists:
            out[list_set(plist.name, fam)] = ("list", plist.name, fam)
    return dict(sorted(out.items()))


def sets(policy: Policy) -> list[Json]:
    return [
        b.set_(name, "ipv4_addr" if fam == 4 else "ipv6_addr", ["interval"])
        for name, (_, _, fam) in wanted(policy).items()
    ]


def counters(policy: Policy) -> list[str]:
    return [COUNTRY_COUNTER, LIST_COUNTER] if wanted(policy) else []


def drop_stage(policy: Policy) -> list[tuple[list[Json], str]]:
    """`ip saddr @geo_blocked_v4 counter drop` (all blocked countries) and the same per deny
    list, per family."""
    out: list[tuple[list[Json], str]] = []
    blocked = policy.geoip.block_countries if policy.geoip else ()
    for fam in (4, 6):
        if blocked:
            exprs = [
                b.in_set(_saddr(fam), blocked_set(fam)),
                b.named_counter(COUNTRY_COUNTER),
                b.drop(),
            ]
            out.append((exprs, "builtin:countries"))
        for plist in policy.lists:
            if plist.action == "deny":
                exprs = [
                    b.in_set(_saddr(fam), list_set(plist.name, fam)),
                    b.named_counter(LIST_COUNTER),
                    b.drop(),
                ]
                out.append((exprs, f"builtin:list:{plist.name}"))
    return out


def zone_dispatch(
    policy: Policy, target: Callable[[str], str] = n.zone_chain
) -> list[tuple[list[Json], str]]:
    """`ip saddr @list_x_v4 goto zone_x` per list zone and family, in policy order
    (`target`: the zone's chain; the forward path's are `fzone_x`)."""
    out: list[tuple[list[Json], str]] = []
    for zone in policy.zones:
        if zone.list is None:
            continue
        for fam in (4, 6):
            member = b.in_set(_saddr(fam), list_set(zone.list, fam))
            out.append(([member, b.goto(target(zone.name))], f"builtin:listzone:{zone.name}"))
    return out


def rule_matches(rule: Rule, family: int) -> Iterator[list[Json]]:
    """The rule's country and list conditions for one family: one alternative per
    (country, list) pair; each field is one of its sets, both fields must hold."""
    country_sets: list[str | None] = [country_set(c, family) for c in rule.source_countries]
    list_sets: list[str | None] = [list_set(name, family) for name in rule.source_lists]
    for cs in country_sets or [None]:
        for ls in list_sets or [None]:
            yield [b.in_set(_saddr(family), s) for s in (cs, ls) if s is not None]
