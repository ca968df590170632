"""Cross-field checks of the `egress:` and `sandbox:` sections (layer L1, pure).

Owns: contradictions a single field cannot show — a default TTL above the maximum, refresh
bounds the wrong way round, domains without resolvers, allowlisted or known-good addresses
that known_bad always overrides. Field-level checks live in `egress`.
"""

from __future__ import annotations

from aitherfwd.durations import format_duration
from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.model import Egress, IPNetwork, SandboxSettings
from aitherfwd.policy.source import YNode, position_of


def check_egress(
    egress: Egress | None, sandbox: SandboxSettings, root: YNode | None, report: Reporter
) -> None:
    if sandbox.default_ttl > sandbox.max_ttl:
        report.error(
            "E-SANDBOX-TTL",
            "sandbox.default_ttl",
            f"default_ttl {format_duration(sandbox.default_ttl)} is above max_ttl "
            f"{format_duration(sandbox.max_ttl)}; lower it or raise max_ttl",
            position_of(root, "sandbox", "default_ttl") or position_of(root, "sandbox"),
        )
    if egress is None:
        return
    dns = egress.dns
    if dns.min_refresh > dns.max_refresh:
        report.error(
            "E-DNS-REFRESH",
            "egress.dns.min_refresh",
            f"min_refresh {format_duration(dns.min_refresh)} is above max_refresh "
            f"{format_duration(dns.max_refresh)}",
            position_of(root, "egress", "dns", "min_refresh") or position_of(root, "egress"),
        )
    if egress.hosts() and not egress.resolvers:
        report.error(
            "E-NO-RESOLVERS",
            "egress.resolvers",
            "host names are allowlisted or used as destinations, but no resolvers are "
            "listed: add egress.resolvers (the DNS servers the host may always reach)",
            position_of(root, "egress"),
        )
    for section, nets in (("allowlist.ips", egress.allow_ips), ("known_good", egress.known_good)):
        for i, net in enumerate(nets):
            bad = _overlap(net, egress.known_bad)
            if bad is not None:
                path = section.split(".")
                report.warning(
                    "W-KNOWN-BAD-WINS",
                    f"egress.{section}[{i}]",
                    f"{net} overlaps known_bad {bad}; known_bad always wins there",
                    position_of(root, "egress", *path, i) or position_of(root, "egress"),
                )


def _overlap(net: IPNetwork, others: tuple[IPNetwork, ...]) -> IPNetwork | None:
    for other in others:
        if other.version == net.version and net.overlaps(other):
            return other
    return None
