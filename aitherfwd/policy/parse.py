"""Located YAML nodes to the typed `Policy` (layer L1, pure).

Owns: the schema of each section (settings, zones, services, rules), service resolution into
port matches, and the policy's content hash. Cross-rule checks live in `validate`.
Must not read files: includes (`services_file`) come through the `read` callable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from aitherfwd.durations import parse_duration
from aitherfwd.policy.diagnostics import Diagnostic, Reporter
from aitherfwd.policy.egress import EgressParser
from aitherfwd.policy.egress_checks import check_egress
from aitherfwd.policy.fields import Fields, Section
from aitherfwd.policy.geo import check_geo, parse_geoip, parse_lists
from aitherfwd.policy.journal import parse_journal
from aitherfwd.policy.model import (
    Action,
    Egress,
    IPNetwork,
    NotifySettings,
    Policy,
    Protocol,
    ReputationSettings,
    Rule,
    SandboxSettings,
    ScanSettings,
    Service,
    Settings,
    Severity,
    Zone,
    merge_ranges,
)
from aitherfwd.policy.notify import parse_notify
from aitherfwd.policy.registry import canonical_services
from aitherfwd.policy.rules import RuleParser
from aitherfwd.policy.source import YNode, parse_yaml
from aitherfwd.policy.validate import validate

TOP_KEYS = {
    "version",
    "settings",
    "zones",
    "services",
    "services_file",
    "rules",
    "reputation",
    "notify",
    "egress",
    "sandbox",
    "journal",
    "geoip",
    "lists",
}
REPUTATION_KEYS = set(ReputationSettings.__dataclass_fields__)
SETTINGS_KEYS = set(Settings.__dataclass_fields__)
ZONE_KEYS = {"name", "cidrs", "description", "containers", "list"}
CONTAINER_ZONE = "docker"  # a zone of this name holds containers unless it says otherwise
SERVICE_KEYS = {"ports", "protocol", "description"}

Reader = Callable[[str], tuple[str, str]]  # relative path -> (display name, text); OSError


@dataclass(frozen=True, slots=True)
class ParseResult:
    policy: Policy | None  # None when there are errors
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return self.policy is not None


def parse_policy(text: str, filename: str, read: Reader | None = None) -> ParseResult:
    """Parse and validate a policy; report every problem, located and coded."""
    report = Reporter()
    root = parse_yaml(text, filename, report)
    hasher = hashlib.sha256(text.encode())
    policy = None
    if root is not None:
        policy = _Parser(report, read, hasher).policy(root)
    if policy is not None:
        validate(policy, root, report)
        check_egress(policy.egress, policy.sandbox, root, report)
        check_geo(policy, root, report)
    if report.errors:
        policy = None
    return ParseResult(policy, report.sorted())


class _Parser:
    def __init__(self, report: Reporter, read: Reader | None, hasher: hashlib._Hash) -> None:
        self.report = report
        self.f = Fields(report)
        self.read = read
        self.hasher = hasher
        self.includes: list[str] = []

    def policy(self, root: YNode) -> Policy | None:
        top = self.f.mapping(root, "", TOP_KEYS)  # `version` is optional (seed 000 has none)
        if top is not None and not top:  # never "deny everything" from an empty file
            self.report.error("E-EMPTY", "", "the policy is empty; write its rules", root.pos)
        if not top or (
            "version" in top and self.f.integer(top["version"], "version", 1, 1) is None
        ):
            return None
        settings = self.settings(top["settings"]) if "settings" in top else Settings()
        zones = self.zones(top["zones"]) if "zones" in top else []
        services = self.services(top["services"], "services") if "services" in top else {}
        if "services_file" in top:
            services = self.services_file(top["services_file"], services)
        zone_names = [z.name for z in zones or []]
        rules = self.each_rule(top["rules"], zone_names, services) if "rules" in top else []
        reputation = (
            self.reputation(top["reputation"]) if "reputation" in top else ReputationSettings()
        )
        geoip = parse_geoip(top["geoip"], self.f) if "geoip" in top else None
        lists = parse_lists(top["lists"], self.f) if "lists" in top else ()
        if settings is None or zones is None or services is None or rules is None:
            return None
        notify = parse_notify(top["notify"], self.f, self.report) if "notify" in top else None
        if reputation is None or ("notify" in top and notify is None):
            return None
        ep = EgressParser(self.f, self.report)
        egress = ep.egress(top["egress"]) if "egress" in top else None
        sandbox = ep.sandbox(top["sandbox"]) if "sandbox" in top else SandboxSettings()
        journal = parse_journal(top["journal"], self.f, self.report) if "journal" in top else ()
        failed = ("egress" in top and egress is None) or ("geoip" in top and geoip is None)
        if failed or sandbox is None or lists is None or journal is None:
            return None
        if egress is not None and "default_action" not in top["egress"].value:
            # without its own default, the egress section takes the settings' default
            egress = replace(egress, default_action=settings.egress_default_policy)
        if egress is None and settings.egress_default_policy is not Action.ALLOW:
            # outbound is filtered, so the kernel must filter it too (evaluate says so)
            egress = Egress(default_action=settings.egress_default_policy)
        return Policy(
            1,
            settings,
            tuple(zones),
            tuple(services.values()),
            tuple(rules),
            self.hasher.hexdigest(),
            reputation=reputation,
            notify=notify or NotifySettings(),
            includes=tuple(self.includes),
            egress=egress,
            sandbox=sandbox,
            journal=journal,
            geoip=geoip,
            lists=lists,
        )

    def settings(self, node: YNode) -> Settings | None:
        m = self.f.mapping(node, "settings", SETTINGS_KEYS)
        if m is None:
            return None
        defaults = Settings()
        values: dict[str, object] = {}
        readers: dict[str, Callable[[YNode, str], object]] = {
            "default_policy": lambda n, p: self.f.enum(n, p, Action),
            "egress_default_policy": lambda n, p: self.f.enum(n, p, Action),
            "log_denied": self.f.boolean,
            "log_allowed": self.f.boolean,
            "max_connections_per_ip": lambda n, p: self.f.integer(n, p, 0, 10_000_000),
            "syn_flood_threshold": lambda n, p: self.f.integer(n, p, 0, 10_000_000),
            "connection_idle_timeout": lambda n, p: self.f.integer(n, p, 1, 86_400 * 7),
            "rule_reload_interval": lambda n, p: self.f.integer(n, p, 1, 86_400),
            "admin_ports": self.port_numbers,
            "scan": self.scan,
            "detection_grace": self.duration,
            "audit_decisions": lambda n, p: self.f.integer(n, p, 0, 10_000),
            "audit_evaluate": self.f.boolean,
        }
        ok = True
        for key, child in m.items():
            if key in readers:
                value = readers[key](child, f"settings.{key}")
                ok = ok and value is not None
                values[key] = value
        if not ok:
            return None
        return Settings(**{**{k: getattr(defaults, k) for k in SETTINGS_KEYS}, **values})

    def scan(self, node: YNode, path: str) -> ScanSettings | None:
        m = self.f.mapping(node, path, {"ports", "window"})
        if m is None:
            return None
        d = ScanSettings()
        ports = self.f.integer(m["ports"], f"{path}.ports", 2, 65535) if "ports" in m else d.ports
        window = self.duration(m["window"], f"{path}.window") if "window" in m else d.window
        if ports is None or window is None:
            return None
        return ScanSettings(ports, window)

    def reputation(self, node: YNode) -> ReputationSettings | None:
        m = self.f.mapping(node, "reputation", REPUTATION_KEYS)
        if m is None:
            return None
        d = ReputationSettings()
        section = Section(m, "reputation")
        get = section.get

        r = ReputationSettings(
            threshold=get(
                "threshold", lambda n, p: self.f.integer(n, p, 1, 1_000_000), d.threshold
            ),
            temp_block=get("temp_block", self.duration, d.temp_block),
            permanent_after=get(
                "permanent_after", lambda n, p: self.f.integer(n, p, 1, 1000), d.permanent_after
            ),
            memory=get("memory", self.duration, d.memory),
            decay_half_life=get("decay_half_life", self.duration, d.decay_half_life),
            severity_weights=get("severity_weights", self.weights, d.severity_weights),
            ipv6_prefix=get(
                "ipv6_prefix", lambda n, p: self.f.integer(n, p, 8, 128), d.ipv6_prefix
            ),
            never_block=tuple(
                get("never_block", lambda n, p: self.f.each(n, p, self.f.cidr), list(d.never_block))
            ),
        )
        return r if section.ok else None

    def duration(self, node: YNode, path: str) -> int | None:
        try:
            return parse_duration(node.value if not isinstance(node.value, str) else node.raw)
        except ValueError as exc:
            self.report.error("E-DURATION", path, str(exc), node.pos)
            return None

    def weights(self, node: YNode, path: str) -> dict[Severity, float] | None:
        m = self.f.mapping(node, path, {s.value for s in Severity})
        if m is None:
            return None
        out = dict(ReputationSettings().severity_weights)
        for key, child in m.items():
            value = self.f.integer(child, f"{path}.{key}", 0, 1_000_000)
            if value is None:
                return None
            out[Severity(key)] = float(value)
        return out

    def port_numbers(self, node: YNode, path: str) -> tuple[int, ...] | None:
        ports = self.f.each(node, path, lambda n, p: self.f.integer(n, p, 1, 65535))
        return tuple(ports) if ports is not None else None

    def zones(self, node: YNode) -> list[Zone] | None:
        items = self.f.items(node, "zones")
        if items is None:
            return None
        zones: list[Zone] = []
        for i, item in enumerate(items):
            path = f"zones[{i}]"
            m = self.f.mapping(item, path, ZONE_KEYS, frozenset({"name"}))
            if m is None or "name" not in m:
                continue
            if ("cidrs" in m) == ("list" in m):  # a list zone: policy/geo.py
                self.report.error(
                    "E-ZONE-SOURCE", path, "a zone needs either cidrs or a list", m["name"].pos
                )
                continue
            name = self.f.name(m["name"], f"{path}.name")
            plist = self.f.name(m["list"], f"{path}.list") if "list" in m else None
            cidrs: list[IPNetwork] | None = (
                self.f.each(m["cidrs"], f"{path}.cidrs", self.f.cidr) if plist is None else []
            )
            desc = (
                self.f.string(m["description"], f"{path}.description") if "description" in m else ""
            )
            containers = (
                self.f.boolean(m["containers"], f"{path}.containers")
                if "containers" in m
                else name == CONTAINER_ZONE
            )
            if name is None or cidrs is None or desc is None or containers is None:
                continue
            if any(z.name == name for z in zones):
                self.report.error(
                    "E-DUPLICATE-NAME",
                    f"{path}.name",
                    f"zone '{name}' is defined twice",
                    m["name"].pos,
                )
                continue
            if not cidrs and plist is None:
                self.report.error(
                    "E-EMPTY", f"{path}.cidrs", "a zone needs at least one CIDR", m["cidrs"].pos
                )
                continue
            zones.append(Zone(name, tuple(cidrs), desc, containers, plist))
        return zones

    def services(self, node: YNode, path: str) -> dict[str, Service] | None:
        canonical = canonical_services(node, path, self.report)
        if canonical is None:
            return None
        node = canonical
        m = self.f.mapping(node, path, set(node.value) if node.is_map else set())
        if m is None:
            return None
        out: dict[str, Service] = {}
        for name, child in m.items():
            spath = f"{path}.{name}"
            checked = self.f.name(YNode(name, child.key_pos or child.pos, raw=name), spath)
            sm = self.f.mapping(child, spath, SERVICE_KEYS, frozenset({"ports"}))
            if checked is None or sm is None or "ports" not in sm:
                continue
            ports = self.f.each(sm["ports"], f"{spath}.ports", self.f.port, scalar_ok=True)
            proto = (
                self.f.enum(sm["protocol"], f"{spath}.protocol", Protocol)
                if "protocol" in sm
                else Protocol.TCP
            )
            desc = (
                self.f.string(sm["description"], f"{spath}.description")
                if "description" in sm
                else ""
            )
            if ports is None or proto is None or desc is None:
                continue
            if proto is Protocol.ICMP:
                self.report.error(
                    "E-PROTOCOL",
                    f"{spath}.protocol",
                    "a service with ports must be tcp, udp or any",
                    sm["protocol"].pos,
                )
                continue
            out[name] = Service(name, merge_ranges(ports), proto, desc)
        return out

    def services_file(
        self, node: YNode, inline: dict[str, Service] | None
    ) -> dict[str, Service] | None:
        rel = self.f.string(node, "services_file")
        if rel is None or self.read is None:
            if rel is not None:
                self.report.error(
                    "E-SERVICES-FILE",
                    "services_file",
                    "services_file cannot be read here (policy given as text)",
                    node.pos,
                )
            return None
        try:
            display, text = self.read(rel)
        except OSError as exc:
            self.report.error(
                "E-SERVICES-FILE",
                "services_file",
                f"cannot read '{rel}': {exc.strerror or exc}",
                node.pos,
            )
            return None
        self.hasher.update(b"\0services_file\0" + text.encode())
        self.includes.append(display)
        root = parse_yaml(text, display, self.report)
        if root is None:
            return None
        if root.is_map and set(root.value) == {"services"}:
            root = root.value["services"]
        loaded = self.services(root, "services")
        if loaded is None or inline is None:
            return None
        for name in sorted(inline.keys() & loaded.keys()):
            self.report.error(
                "E-DUPLICATE-NAME",
                f"services.{name}",
                f"service '{name}' is defined both inline and in '{rel}'; keep one",
                node.pos,
            )
        return {**inline, **loaded}

    def each_rule(
        self, node: YNode, zones: list[str], services: dict[str, Service] | None
    ) -> list[Rule] | None:
        items = self.f.items(node, "rules")
        if items is None:
            return None
        rules: list[Rule] = []
        names: set[str] = set()
        ok = True
        for i, item in enumerate(items):
            rule = RuleParser(self.report, f"rules[{i}]", zones, services or {}).rule(item)
            if rule is None:
                ok = False
            elif rule.name in names:
                self.report.error(
                    "E-DUPLICATE-NAME",
                    f"rules[{i}].name",
                    f"rule name '{rule.name}' is used twice; names must be unique",
                    item.value["name"].pos,
                )
                ok = False
            else:
                names.add(rule.name)
                rules.append(rule)
        return rules if ok else None
