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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aitherfwd.egress import names as en
from aitherfwd.errors import AitherError
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import Egress, IPAddress, IPNetwork, PortRange, SandboxSettings

METADATA: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("169.254.169.254/32"),
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
            return f"{key_of(net)} covers the cloud metadata address {meta.network_address}"
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


class GrantTable:
    """Live grants by key. Expired ones are pruned lazily (the kernel expires its own)."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        self.update_in_place = False  # see BlockTable.update_in_place

    def __len__(self) -> int:
        return len(self._grants)

    def get(self, key: str, now: float) -> Grant | None:
        g = self._grants.get(key)
        return g if g is not None and g.expires_at > now else None

    def prune(self, now: float) -> list[Grant]:
        gone = [g for g in self._grants.values() if g.expires_at <= now]
        for g in gone:
            del self._grants[g.key]
        return gone

    def active(self, now: float) -> list[Grant]:
        self.prune(now)
        return sorted(self._grants.values(), key=lambda g: g.key)

    def check_overlap(self, net: IPNetwork, now: float) -> None:
        if net.prefixlen == net.max_prefixlen:
            return
        for g in self.active(now):
            other = g.network
            same = other.version == net.version and g.key != key_of(net)
            if not g.single and same and net.overlaps(other):
                raise GrantError(
                    f"{net} overlaps the granted prefix {other}; revoke it first",
                    code="E-GRANT-OVERLAP",
                )

    def put(self, grants: Iterable[Grant], now: float) -> list[Any]:
        """Record grants (replacing earlier ones for the same key); the kernel commands."""
        touch: dict[str, list[Any]] = {}
        adds: dict[str, list[Any]] = {}
        for g in grants:
            old = self.get(g.key, now)
            same = old is not None and self.update_in_place and old.values() == g.values()
            if old is not None and not same:  # it may expire any moment: add, delete, add
                for s, v in old.values():
                    touch.setdefault(s, []).append(v)
            for s, e in g.elements(now):
                adds.setdefault(s, []).append(e)
            self._grants[g.key] = g
        cmds: list[Any] = [b.add(b.element(s, v)) for s, v in sorted(touch.items())]
        cmds += [{"delete": b.element(s, v)} for s, v in sorted(touch.items())]
        cmds += [b.add(b.element(s, v)) for s, v in sorted(adds.items())]
        return cmds

    def remove(self, key: str, now: float) -> tuple[Grant, list[Any]] | None:
        g = self.get(key, now)
        if g is None:
            return None
        del self._grants[key]
        cmds: list[Any] = []
        for s, v in g.values():
            cmds += [b.add(b.element(s, [v])), {"delete": b.element(s, [v])}]
        return g, cmds

    def restore_commands(self, now: float) -> list[Any]:
        by_set: dict[str, list[Any]] = {}
        for g in self.active(now):
            for s, e in g.elements(now):
                by_set.setdefault(s, []).append(e)
        return [b.add(b.element(s, v)) for s, v in sorted(by_set.items())]

    def load(self, grants: Iterable[Grant]) -> None:
        for g in grants:
            self._grants[g.key] = g

    def lookup(
        self, address: IPAddress, port: int | None, allowed: tuple[PortRange, ...], now: float
    ) -> Grant | None:
        """The live grant that lets this connection out, if any."""
        g = self.get(str(address), now)
        if g is not None and g.covers(address, port, allowed):
            return g
        for g in self.active(now):
            if not g.single and g.covers(address, port, allowed):
                return g
        return None

    def set_counts(self, now: float) -> dict[str, int]:
        """Live kernel elements per sandbox set (a grant with ports has one per port)."""
        out: dict[str, int] = {}
        for g in self.active(now):
            for s, _ in g.values():
                out[s] = out.get(s, 0) + 1
        return out

    def counts(self, now: float) -> dict[str, int]:
        live = self.active(now)
        return {
            "grants_v4": sum(1 for g in live if g.family == 4),
            "grants_v6": sum(1 for g in live if g.family == 6),
        }
