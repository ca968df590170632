"""Whole-policy checks that need more than one section (layer L1, pure).

Owns: zones shadowed by earlier zones, rules that can never match, and warnings about
layer-7 fields the kernel cannot enforce. Field-level checks live in `parse`.
"""

from __future__ import annotations

import ipaddress

from aitherfwd.policy.containers import check_containers
from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.model import IPNetwork, Policy
from aitherfwd.policy.source import YNode, position_of


def validate(policy: Policy, root: YNode | None, report: Reporter) -> None:
    _zones_reachable(policy, root, report)
    _rules_reachable(policy, root, report)
    _layer7_fields(policy, root, report)
    check_containers(policy, root, report)


def covered(net: IPNetwork, earlier: list[IPNetwork]) -> bool:
    """True when `net` lies entirely inside the union of `earlier`."""
    same = [n for n in earlier if n.version == net.version]
    collapsed = ipaddress.collapse_addresses(same)  # type: ignore[type-var]
    return any(net.subnet_of(c) for c in collapsed)  # type: ignore[arg-type]


def _zones_reachable(policy: Policy, root: YNode | None, report: Reporter) -> None:
    earlier: list[IPNetwork] = []
    for zi, zone in enumerate(policy.zones):
        shadowed = [c for c in zone.cidrs if covered(c, earlier)]
        if zone.list is not None:
            continue  # a list zone is matched before the CIDR zones (nft/geo.py)
        if len(shadowed) == len(zone.cidrs):
            report.error(
                "E-ZONE-SHADOWED",
                f"zones[{zi}]",
                f"zone '{zone.name}' can never match: "
                "every CIDR of it belongs to an earlier zone (the first matching zone "
                "wins); move it up or narrow the earlier zones",
                position_of(root, "zones", zi),
            )
        else:
            for c in shadowed:
                ci = zone.cidrs.index(c)
                report.warning(
                    "W-CIDR-SHADOWED",
                    f"zones[{zi}].cidrs[{ci}]",
                    f"{c} is already covered by earlier zones and never selects this zone",
                    position_of(root, "zones", zi, "cidrs", ci),
                )
        earlier.extend(zone.cidrs)


def _rules_reachable(policy: Policy, root: YNode | None, report: Reporter) -> None:
    swallowed: set[str] = set()  # zones for which an unconditional rule already decided
    everything = False
    for ri, rule in enumerate(policy.rules):
        zones = set(rule.zones) if rule.zones is not None else None
        dead = everything or (zones is not None and zones <= swallowed)
        if dead:
            report.warning(
                "W-RULE-UNREACHABLE",
                f"rules[{ri}]",
                f"rule '{rule.name}' never "
                "matches: an earlier rule without conditions decides every connection "
                "it could see",
                position_of(root, "rules", ri, "name"),
            )
        if rule.unconditional:
            if zones is None:
                everything = True
            else:
                swallowed |= zones


def _layer7_fields(policy: Policy, root: YNode | None, report: Reporter) -> None:
    for ri, rule in enumerate(policy.rules):
        for key, value in (
            ("path_prefix", rule.path_prefix),
            ("authenticated", rule.authenticated),
        ):
            if value is not None:
                report.warning(
                    "W-LAYER7",
                    f"rules[{ri}].{key}",
                    f"the kernel cannot see {key}: the ruleset leaves this rule out; "
                    "it is enforced by aitherfwd.asgi.FirewallMiddleware (docs/middleware.md) "
                    "and answered by evaluate",
                    position_of(root, "rules", ri, key),
                )
