"""The `egress:` and `sandbox:` sections of the policy (layer L1, pure).

Owns: parsing outbound control — resolvers, named outbound rules (destination a host name,
IP or CIDR), the allowlist (domains, IPs, ports), known_good / known_bad, DNS refresh
bounds — and the bounds of sandbox grants, with located diagnostics. Cross-field checks
live in `egress_checks`. Must not resolve names or do any other I/O.
"""

from __future__ import annotations

import re

from aitherfwd.durations import parse_duration
from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.fields import Fields, Section, parse_cidr
from aitherfwd.policy.model import (
    Action,
    DnsBounds,
    Egress,
    EgressRule,
    IPAddress,
    IPNetwork,
    PortRange,
    Protocol,
    SandboxSettings,
    merge_ranges,
)
from aitherfwd.policy.source import YNode

EGRESS_KEYS = {
    "default_action",
    "resolvers",
    "rules",
    "allowlist",
    "known_good",
    "known_bad",
    "dns",
}
RULE_KEYS = {"name", "destination", "protocol", "ports", "action", "direction", "log"}
ALLOWLIST_KEYS = {"domains", "ips", "ports"}
DNS_KEYS = {"min_refresh", "max_refresh", "grace"}
SANDBOX_KEYS = {
    "max_ttl",
    "default_ttl",
    "allowed_ports",
    "min_prefix_v4",
    "min_prefix_v6",
    "max_grants",
    "max_grants_per_scope",
}
# name -> (lowest, highest) of the sandbox section's whole-number settings
SANDBOX_LIMITS = {
    "min_prefix_v4": (0, 32),
    "min_prefix_v6": (0, 128),
    "max_grants": (1, 1_000_000),
    "max_grants_per_scope": (1, 1_000_000),
}

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def host_name(text: str) -> str | None:
    """A DNS name, lowercased and without its trailing dot, or None when it is not one."""
    name = text.strip().lower().removesuffix(".")
    if not HOST_RE.match(name) or name.replace(".", "").isdigit():
        return None
    return name


class EgressParser:
    def __init__(self, f: Fields, report: Reporter) -> None:
        self.f = f
        self.report = report

    def egress(self, node: YNode) -> Egress | None:
        m = self.f.mapping(node, "egress", EGRESS_KEYS)
        if m is None:
            return None
        section = Section(m, "egress")
        get = section.get

        d = Egress()
        action = get("default_action", lambda n, p: self.f.enum(n, p, Action), d.default_action)
        resolvers = get("resolvers", self.addresses, [])
        rules = get("rules", self.rules, [])
        domains, ips, ports = get("allowlist", self.allowlist, ([], [], ())) or ([], [], ())
        good = get("known_good", lambda n, p: self.f.each(n, p, self.f.cidr), [])
        badl = get("known_bad", lambda n, p: self.f.each(n, p, self.f.cidr), [])
        dns = get("dns", self.dns, d.dns)
        if not section.ok:
            return None
        return Egress(
            action,
            tuple(resolvers),
            tuple(rules),
            tuple(domains),
            tuple(ips),
            ports,
            tuple(good),
            tuple(badl),
            dns,
        )

    def addresses(self, node: YNode, path: str) -> list[IPAddress] | None:
        def one(n: YNode, p: str) -> IPAddress | None:
            net = self.f.cidr(n, p)
            if net is not None and net.prefixlen != net.max_prefixlen:
                self.report.error("E-ADDRESS", p, f"{net} is a prefix; give one address", n.pos)
                return None
            return net.network_address if net is not None else None

        return self.f.each(node, path, one, scalar_ok=True)

    def ports(self, node: YNode, path: str) -> tuple[PortRange, ...] | None:
        ports = self.f.each(node, path, self.f.port, scalar_ok=True)
        return merge_ranges(ports) if ports is not None else None

    def duration(self, node: YNode, path: str) -> int | None:
        try:
            return parse_duration(node.value if not isinstance(node.value, str) else node.raw)
        except ValueError as exc:
            self.report.error("E-DURATION", path, str(exc), node.pos)
            return None

    def domain(self, node: YNode, path: str) -> str | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        name = host_name(text)
        if name is None:
            self.report.error(
                "E-DOMAIN",
                path,
                f"'{text}' is not a host name (letters, digits and '-' in dot-separated labels)",
                node.pos,
            )
        return name

    def allowlist(
        self, node: YNode, path: str
    ) -> tuple[list[str], list[IPNetwork], tuple[PortRange, ...]] | None:
        m = self.f.mapping(node, path, ALLOWLIST_KEYS)
        if m is None:
            return None
        domains = (
            self.f.each(m["domains"], f"{path}.domains", self.domain) if "domains" in m else []
        )
        ips: list[IPNetwork] | None = (
            self.f.each(m["ips"], f"{path}.ips", self.f.cidr) if "ips" in m else []
        )
        ports = self.ports(m["ports"], f"{path}.ports") if "ports" in m else ()
        if domains is None or ips is None or ports is None:
            return None
        return sorted(set(domains)), list(ips), ports

    def dns(self, node: YNode, path: str) -> DnsBounds | None:
        m = self.f.mapping(node, path, DNS_KEYS)
        if m is None:
            return None
        d = DnsBounds()
        values = {k: self.duration(m[k], f"{path}.{k}") for k in DNS_KEYS if k in m}
        if any(v is None for v in values.values()):
            return None
        return DnsBounds(
            values.get("min_refresh") or d.min_refresh,
            values.get("max_refresh") or d.max_refresh,
            values.get("grace") or d.grace,
        )

    def rules(self, node: YNode, path: str) -> list[EgressRule] | None:
        items = self.f.items(node, path)
        if items is None:
            return None
        out: list[EgressRule] = []
        ok = True
        for i, item in enumerate(items):
            rule = self.rule(item, f"{path}[{i}]")
            if rule is None:
                ok = False
            elif any(r.name == rule.name for r in out):
                self.report.error(
                    "E-DUPLICATE-NAME",
                    f"{path}[{i}].name",
                    f"egress rule name '{rule.name}' is used twice; names must be unique",
                    item.value["name"].pos,
                )
                ok = False
            else:
                out.append(rule)
        return out if ok else None

    def rule(self, node: YNode, path: str) -> EgressRule | None:
        m = self.f.mapping(node, path, RULE_KEYS, frozenset({"name", "destination", "action"}))
        if m is None or not {"name", "destination", "action"} <= m.keys():
            return None
        name = self.f.name(m["name"], f"{path}.name")
        action = self.f.enum(m["action"], f"{path}.action", Action)
        dests, host = self.destination(m["destination"], f"{path}.destination")
        proto = (
            self.f.enum(m["protocol"], f"{path}.protocol", Protocol)
            if "protocol" in m
            else Protocol.ANY
        )
        ports = self.ports(m["ports"], f"{path}.ports") if "ports" in m else ()
        log = self.f.boolean(m["log"], f"{path}.log") if "log" in m else True
        if "direction" in m:
            direction = self.f.string(m["direction"], f"{path}.direction")
            if direction is not None and direction.lower() != "outbound":
                self.report.error(
                    "E-DIRECTION",
                    f"{path}.direction",
                    f"'{direction}': egress rules are outbound; put inbound rules under rules:",
                    m["direction"].pos,
                )
                return None
        if name is None or action is None or proto is None or ports is None or log is None:
            return None
        if dests is None and host is None:
            return None
        if ports and proto not in (Protocol.TCP, Protocol.UDP, Protocol.ANY):
            self.report.error(
                "E-PROTOCOL",
                f"{path}.protocol",
                "a rule with ports must be tcp, udp or any",
                m["protocol"].pos,
            )
            return None
        return EgressRule(name, action, tuple(dests or ()), host, proto, ports or (), bool(log))

    def destination(self, node: YNode, path: str) -> tuple[list[IPNetwork] | None, str | None]:
        """A host name, an IP or a CIDR (or a list of IPs/CIDRs)."""
        if node.is_list:
            return self.f.each(node, path, self.f.cidr), None
        text = self.f.string(node, path)
        if text is None:
            return None, None
        try:
            return [parse_cidr(text)], None
        except ValueError as exc:
            name = host_name(text)
            if name is not None and not text.replace(".", "").replace("/", "").isdigit():
                return None, name
            self.report.error(
                "E-DESTINATION", path, f"not a host name, IP or CIDR: {exc}", node.pos
            )
            return None, None

    def sandbox(self, node: YNode) -> SandboxSettings | None:
        m = self.f.mapping(node, "sandbox", SANDBOX_KEYS)
        if m is None:
            return None
        d = SandboxSettings()
        max_ttl = self.duration(m["max_ttl"], "sandbox.max_ttl") if "max_ttl" in m else d.max_ttl
        default = (
            self.duration(m["default_ttl"], "sandbox.default_ttl")
            if "default_ttl" in m
            else min(d.default_ttl, max_ttl or d.default_ttl)
        )
        ports = (
            self.ports(m["allowed_ports"], "sandbox.allowed_ports") if "allowed_ports" in m else ()
        )
        limits: dict[str, int | None] = {
            k: self.f.integer(m[k], f"sandbox.{k}", lo, hi) if k in m else getattr(d, k)
            for k, (lo, hi) in SANDBOX_LIMITS.items()
        }
        if max_ttl is None or default is None or ports is None or None in limits.values():
            return None
        return SandboxSettings(
            max_ttl, default, ports, **{k: v for k, v in limits.items() if v is not None}
        )
