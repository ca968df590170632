"""Checks of the container parts of a policy (layer L1, pure).

Owns: what `containers: true` zones and `applies_to` must satisfy beyond their types —
a container zone may not take in every address (all routed traffic would count as
inbound to containers, and container egress could never apply), and a rule narrowed to
containers in a policy without a container zone never matches. Called by `validate`;
`forwarding_warning` by `aitherfwd check`, which reads the host's forwarding switches.
"""

from __future__ import annotations

from aitherfwd.policy.diagnostics import Diagnostic, Pos, Reporter, Severity
from aitherfwd.policy.model import AppliesTo, Policy
from aitherfwd.policy.source import YNode, position_of


def check_containers(policy: Policy, root: YNode | None, report: Reporter) -> None:
    for zi, zone in enumerate(policy.zones):
        if not zone.containers:
            continue
        for ci, net in enumerate(zone.cidrs):
            if net.prefixlen == 0:
                report.error(
                    "E-CONTAINER-ZONE",
                    f"zones[{zi}].cidrs[{ci}]",
                    f"zone '{zone.name}' holds containers and cannot contain every address "
                    f"({net}): name the bridge networks (172.17.0.0/16, …) or set "
                    "containers: false",
                    position_of(root, "zones", zi, "cidrs", ci),
                )
    if any(z.containers for z in policy.zones):
        return
    for ri, rule in enumerate(policy.rules):
        if rule.applies_to is AppliesTo.CONTAINERS:
            report.warning(
                "W-NO-CONTAINER-ZONE",
                f"rules[{ri}].applies_to",
                f"rule '{rule.name}' applies to containers, but no zone holds containers "
                "(set containers: true on one, or name it docker): it never matches",
                position_of(root, "rules", ri, "applies_to"),
            )


def forwarding_warning(policy: Policy, families: list[int], filename: str) -> Diagnostic | None:
    """`aitherfwd check` on a host that forwards (`families`: the IP versions it routes)
    with a policy without a container zone: routed traffic, published container ports
    included, would not meet the policy at all."""
    if not families or any(z.containers for z in policy.zones):
        return None
    switches = " and ".join(
        "net.ipv4.ip_forward" if f == 4 else "net.ipv6.conf.all.forwarding" for f in families
    )
    return Diagnostic(
        Severity.WARNING,
        "W-FORWARDING",
        "zones",
        f"this host forwards packets ({switches} = 1) but no zone holds containers: routed "
        "traffic, published container ports included, is not filtered; add the container "
        "networks as a zone named docker (or with containers: true)",
        Pos(filename, 1, 1),
    )
