"""Sandbox grants: time-bound outbound access a proxy asks for (layer L1, pure).

Owns: `Grant`, `GrantTable` (what is granted, to which scope, until when, on which ports),
the refusals (known_bad and cloud-metadata destinations, ports the policy does not allow,
overlapping prefixes) and the element commands for each change. A grant without ports goes
into `sandbox_v4/v6` (prefixes: `sandbox_v4_net/v6_net`), where the rule applies
sandbox.allowed_ports; a grant with ports becomes one `address . port` (or `prefix . port`)
element per port in `sandbox_port_v4/v6`. Every element carries the kernel timeout and the
scope as comment.
Time is an argument; nothing here talks to the kernel or the disk.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from aitherfwd.egress import names as en
from aitherfwd.errors import AitherError
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import Egress, IPAddress, IPNetwork, PortRange, SandboxSettings

# Cloud metadata services: AWS, Azure, GCP, OpenStack, DigitalOcean… (169.254.169.254,
# AWS's IPv6 fd00:ec2::254), AWS ECS task metadata (169.254.170.2), Alibaba
# (100.100.100.200), Oracle (192.0.0.192), Tencent (169.254.0.23).
METADATA_V4 = ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "169.254.0.23")


def _v4_forms(text: str) -> list[IPNetwork]:
    """An IPv4 address and the IPv6 addresses that reach it: IPv4-mapped (::ffff:a.b.c.d),
    IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/96),
    and its 6to4 prefix (2002:aabb:ccdd::/48)."""
    v4 = ipaddress.IPv4Address(text)
    n = int(v4)
    return [
        ipaddress.IPv4Network(f"{v4}/32"),
        ipaddress.IPv6Network(f"::ffff:{v4}/128"),
        ipaddress.IPv6Network(f"::{v4}/128"),
        ipaddress.IPv6Network((int(ipaddress.IPv6Address("64:ff9b::")) | n, 128)),
        ipaddress.IPv6Network((int(ipaddress.IPv6Address("64:ff9b:1::")) | n, 128)),
        ipaddress.IPv6Network(((0x2002 << 112) | (n << 80), 48)),
    ]


METADATA: tuple[IPNetwork, ...] = (
    *(net for text in METADATA_V4 for net in _v4_forms(text)),
    ipaddress.IPv6Network("fd00:ec2::254/128"),
)


class GrantError(AitherError):
    """A grant that must not be made: a destination never granted, a port outside
    sandbox.allowed_ports, a prefix overlapping another, a ttl above the role's limit."""

    code = "E-GRANT-REFUSED"


@dataclass(frozen=True, slots=True)
class Grant:
    key: str  # canonical: `93.184.216.34`, or `2001:db8::/64` for a prefix
    expires_at: float
    scope: str
    ports: tuple[int, ...]  # () = whatever sandbox.allowed_ports allows
    created_at: float
    host: str | None = None  # the name it was granted for, when given one
    uid: int | None = None  # who asked

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.key)

    @property
    def family(self) -> int:
        return 6 if ":" in self.key else 4

    @property
    def single(self) -> bool:
        return "/" not in self.key

    def remaining(self, now: float) -> int:
        return max(1, math.ceil(self.expires_at - now))

    def values(self) -> list[tuple[str, Any]]:
        """(set, element key) pairs this grant occupies in the kernel."""
        fam = self.family
        target: Any = self.key
        if not self.single:
            addr, length = self.key.split("/")
            target = b.prefix(addr, int(length))
        if self.ports:
            return [(en.PORT_SETS[fam], {"concat": [target, p]}) for p in self.ports]
        if self.single:
            return [(en.SANDBOX_HASH[fam], self.key)]
        return [(en.SANDBOX_NET[fam], target)]

    def elements(self, now: float) -> list[tuple[str, Any]]:
        t = self.remaining(now)
        comment = f"{self.scope} {self.host}" if self.host else self.scope
        return [
            (s, {"elem": {"val": v, "timeout": t, "comment": comment[:120]}})
            for s, v in self.values()
        ]

    def covers(self, address: IPAddress, port: int | None, allowed: tuple[PortRange, ...]) -> bool:
        if address.version != self.family or address not in self.network:
            return False
        if self.ports:
            return port is not None and port in self.ports
        return not allowed or (port is not None and any(port in r for r in allowed))


def key_of(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def refusal(net: IPNetwork, egress: Egress | None) -> str | None:
    """Why a grant for `net` is never allowed, or None."""
    for meta in METADATA:
        if meta.version == net.version and net.overlaps(meta):
            return f"{key_of(net)} covers the cloud metadata address {key_of(meta)}"
    for bad in egress.known_bad if egress else ():
        if bad.version == net.version and net.overlaps(bad):
            return f"{key_of(net)} overlaps known_bad {bad}, which always wins"
    if net.network_address.is_loopback:
        return "loopback is always reachable; no grant needed"
    return None


def check_ports(ports: tuple[int, ...], settings: SandboxSettings) -> None:
    allowed = settings.allowed_ports
    for port in ports:
        if allowed and not any(port in r for r in allowed):
            raise GrantError(
                f"port {port} is not in sandbox.allowed_ports "
                f"({', '.join(str(r) for r in allowed)})",
                code="E-PORT-NOT-ALLOWED",
            )


def check_width(net: IPNetwork, settings: SandboxSettings) -> None:
    """A caller without the admin role gets no prefix shorter than min_prefix_v4/v6."""
    name = "min_prefix_v4" if net.version == 4 else "min_prefix_v6"
    shortest: int = getattr(settings, name)
    if net.prefixlen < shortest:
        raise GrantError(
            f"{net} is wider than sandbox.{name} ({shortest}) allows a non-admin caller",
            code="E-GRANT-TOO-WIDE",
        )


def check_caps(total: int, in_scope: int, scope: str, settings: SandboxSettings) -> None:
    """Live grants after this request, in total and in its scope, against the caps."""
    if total > settings.max_grants:
        raise GrantError(
            f"sandbox.max_grants ({settings.max_grants}) live grants reached; revoke some or wait",
            code="E-GRANT-LIMIT",
        )
    if in_scope > settings.max_grants_per_scope:
        raise GrantError(
            f"sandbox.max_grants_per_scope ({settings.max_grants_per_scope}) live grants of "
            f"scope {scope!r} reached; revoke some or wait",
            code="E-GRANT-LIMIT",
        )
