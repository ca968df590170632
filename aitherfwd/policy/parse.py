"""Located YAML nodes to the typed `Policy` (layer L1, pure).

Owns: the schema of each section (settings, zones, services, rules), service resolution into
port matches, and the policy's content hash. Cross-rule checks live in `validate`.
Must not read files: includes (`services_file`) come through the `read` callable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from aitherfwd.policy.diagnostics import Diagnostic, Reporter, did_you_mean
from aitherfwd.policy.fields import Fields
from aitherfwd.policy.model import (
    DAY_SECONDS,
    PORT_PROTOCOLS,
    WEEKDAYS,
    Action,
    IPNetwork,
    Policy,
    PortMatch,
    PortRange,
    Protocol,
    RateLimit,
    Rule,
    Service,
    Settings,
    TimeWindow,
    Zone,
    merge_ranges,
)
from aitherfwd.policy.source import YNode, parse_yaml
from aitherfwd.policy.validate import validate

TOP_KEYS = {"version", "settings", "zones", "services", "services_file", "rules"}
SETTINGS_KEYS = set(Settings.__dataclass_fields__)
ZONE_KEYS = {"name", "cidrs", "description"}
SERVICE_KEYS = {"ports", "protocol", "description"}
RULE_KEYS = {
    "name",
    "zone",
    "dest_ports",
    "dest_services",
    "protocol",
    "source_cidrs",
    "time_window",
    "rate_limit_rps",
    "burst",
    "log",
    "action",
    "description",
    "path_prefix",
    "authenticated",
}
WINDOW_KEYS = {"days", "start", "end", "timezone"}

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
        top = self.f.mapping(root, "", TOP_KEYS, frozenset({"version"}))
        if top is None:
            return None
        if "version" in top and self.f.integer(top["version"], "version", 1, 1) is None:
            return None
        settings = self.settings(top["settings"]) if "settings" in top else Settings()
        zones = self.zones(top["zones"]) if "zones" in top else []
        services = self.services(top["services"], "services") if "services" in top else {}
        if "services_file" in top:
            services = self.services_file(top["services_file"], services)
        zone_names = [z.name for z in zones or []]
        rules = self.each_rule(top["rules"], zone_names, services) if "rules" in top else []
        if settings is None or zones is None or services is None or rules is None:
            return None
        return Policy(
            1,
            settings,
            tuple(zones),
            tuple(services.values()),
            tuple(rules),
            self.hasher.hexdigest(),
            tuple(self.includes),
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
            m = self.f.mapping(item, path, ZONE_KEYS, frozenset({"name", "cidrs"}))
            if m is None or "name" not in m or "cidrs" not in m:
                continue
            name = self.f.name(m["name"], f"{path}.name")
            cidrs: list[IPNetwork] | None = self.f.each(m["cidrs"], f"{path}.cidrs", self.f.cidr)
            desc = (
                self.f.string(m["description"], f"{path}.description") if "description" in m else ""
            )
            if name is None or cidrs is None or desc is None:
                continue
            if any(z.name == name for z in zones):
                self.report.error(
                    "E-DUPLICATE-NAME",
                    f"{path}.name",
                    f"zone '{name}' is defined twice",
                    m["name"].pos,
                )
                continue
            if not cidrs:
                self.report.error(
                    "E-EMPTY", f"{path}.cidrs", "a zone needs at least one CIDR", m["cidrs"].pos
                )
                continue
            zones.append(Zone(name, tuple(cidrs), desc))
        return zones

    def services(self, node: YNode, path: str) -> dict[str, Service] | None:
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
        ok = True
        for i, item in enumerate(items):
            rule = _RuleParser(self, f"rules[{i}]", zones, services or {}).rule(item)
            if rule is None:
                ok = False
            elif any(r.name == rule.name for r in rules):
                self.report.error(
                    "E-DUPLICATE-NAME",
                    f"rules[{i}].name",
                    f"rule name '{rule.name}' is used twice; names must be unique",
                    item.value["name"].pos,
                )
                ok = False
            else:
                rules.append(rule)
        return rules if ok else None


class _RuleParser:
    def __init__(
        self, p: _Parser, path: str, zones: list[str], services: dict[str, Service]
    ) -> None:
        self.p, self.f, self.path = p, p.f, path
        self.zone_names, self.services = zones, services

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def rule(self, node: YNode) -> Rule | None:
        m = self.f.mapping(node, self.path, RULE_KEYS, frozenset({"name", "action"}))
        if m is None or "name" not in m or "action" not in m:
            return None
        errors_before = len(self.p.report.errors)
        name = self.f.name(m["name"], self.at("name"))
        action = self.f.enum(m["action"], self.at("action"), Action)
        zones = self.zones(m["zone"]) if "zone" in m else None
        proto = (
            self.f.enum(m["protocol"], self.at("protocol"), Protocol)
            if "protocol" in m
            else Protocol.ANY
        )
        ports = self.ports(m, proto or Protocol.ANY)
        sources: list[IPNetwork] | None = (
            self.f.each(m["source_cidrs"], self.at("source_cidrs"), self.f.cidr, scalar_ok=True)
            if "source_cidrs" in m
            else []
        )
        window = self.window(m["time_window"]) if "time_window" in m else None
        rate = self.rate(m)
        log = self.f.boolean(m["log"], self.at("log")) if "log" in m else False
        desc = self.f.string(m["description"], self.at("description")) if "description" in m else ""
        path_prefix = (
            self.f.string(m["path_prefix"], self.at("path_prefix")) if "path_prefix" in m else None
        )
        authenticated = (
            self.f.boolean(m["authenticated"], self.at("authenticated"))
            if "authenticated" in m
            else None
        )
        if len(self.p.report.errors) > errors_before:
            return None
        if name is None or action is None or proto is None or ports is None:
            return None
        if sources is None or log is None or desc is None:
            return None
        services = (
            tuple(str(n.value) for n in m["dest_services"].value) if "dest_services" in m else ()
        )
        return Rule(
            name,
            action,
            zones,
            proto,
            ports,
            services,
            tuple(sources),
            window,
            rate,
            log,
            desc,
            path_prefix,
            authenticated,
        )

    def zones(self, node: YNode) -> tuple[str, ...] | None:
        names = self.f.each(node, self.at("zone"), self.f.string, scalar_ok=True)
        if names is None:
            return None
        for i, n in enumerate(names):
            if n not in self.zone_names:
                at = node.value[i].pos if node.is_list else node.pos
                self.p.report.error(
                    "E-UNKNOWN-ZONE",
                    self.at("zone"),
                    f"unknown zone '{n}'{did_you_mean(n, self.zone_names)}",
                    at,
                )
        if not names:
            self.p.report.error(
                "E-EMPTY",
                self.at("zone"),
                "an empty zone list matches nothing; omit 'zone' to match every zone",
                node.pos,
            )
        return tuple(dict.fromkeys(names))

    def ports(self, m: dict[str, YNode], proto: Protocol) -> tuple[PortMatch, ...] | None:
        by_proto: dict[Protocol, list[PortRange]] = {}
        ok = True
        if "dest_ports" in m:
            ports = self.f.each(m["dest_ports"], self.at("dest_ports"), self.f.port, scalar_ok=True)
            if ports is None:
                return None
            if proto is Protocol.ICMP:
                self.p.report.error(
                    "E-PROTOCOL",
                    self.at("dest_ports"),
                    "icmp has no ports; remove dest_ports or set protocol tcp/udp",
                    m["dest_ports"].pos,
                )
                return None
            for pr in PORT_PROTOCOLS if proto is Protocol.ANY else (proto,):
                by_proto.setdefault(pr, []).extend(ports)
        if "dest_services" in m:
            items = self.f.items(m["dest_services"], self.at("dest_services"))
            for i, item in enumerate(items or []):
                ok = self.service(item, f"{self.at('dest_services')}[{i}]", proto, by_proto) and ok
        if not ok:
            return None
        return tuple(PortMatch(pr, merge_ranges(rs)) for pr, rs in sorted(by_proto.items()))

    def service(
        self, node: YNode, path: str, proto: Protocol, by_proto: dict[Protocol, list[PortRange]]
    ) -> bool:
        name = self.f.string(node, path)
        if name is None:
            return False
        svc = self.services.get(name)
        if svc is None:
            self.p.report.error(
                "E-UNKNOWN-SERVICE",
                path,
                f"unknown service '{name}'{did_you_mean(name, self.services)}",
                node.pos,
            )
            return False
        if proto is Protocol.ICMP or (
            proto is not Protocol.ANY and svc.protocol not in (proto, Protocol.ANY)
        ):
            self.p.report.error(
                "E-PROTOCOL",
                path,
                f"service '{name}' is {svc.protocol} but the rule's protocol is {proto}",
                node.pos,
            )
            return False
        protos = PORT_PROTOCOLS if svc.protocol is Protocol.ANY else (svc.protocol,)
        for pr in protos if proto is Protocol.ANY else (proto,):
            by_proto.setdefault(pr, []).extend(svc.ports)
        return True

    def window(self, node: YNode) -> TimeWindow | None:
        path = self.at("time_window")
        m = self.f.mapping(node, path, WINDOW_KEYS, frozenset({"start", "end"}))
        if m is None or "start" not in m or "end" not in m:
            return None
        days = (
            self.f.each(m["days"], f"{path}.days", self.day, scalar_ok=True)
            if "days" in m
            else list(range(7))
        )
        start = self.clock(m["start"], f"{path}.start", allow_24=False)
        end = self.clock(m["end"], f"{path}.end", allow_24=True)
        if "timezone" in m:
            tz = self.f.string(m["timezone"], f"{path}.timezone")
            if tz is not None and tz.upper() not in ("UTC", "Z", "ETC/UTC"):
                self.p.report.error(
                    "E-TIMEZONE",
                    f"{path}.timezone",
                    f"'{tz}': time windows are "
                    "enforced by the kernel in UTC; write start/end in UTC and "
                    "set timezone: UTC",
                    m["timezone"].pos,
                )
                return None
        if days is None or start is None or end is None:
            return None
        if start == end % DAY_SECONDS and end != DAY_SECONDS:
            self.p.report.error(
                "E-TIME",
                path,
                "start and end are equal: the window is empty; "
                "omit time_window to match at all times",
                m["end"].pos,
            )
            return None
        if not days:
            self.p.report.error(
                "E-EMPTY", f"{path}.days", "no days: the window never opens", m["days"].pos
            )
            return None
        return TimeWindow(frozenset(days), start, end)

    def day(self, node: YNode, path: str) -> int | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        key = text.strip().lower()[:3]
        if key not in WEEKDAYS or text.strip().lower() not in (key, _FULL_DAYS[key]):
            self.p.report.error(
                "E-DAY",
                path,
                f"'{text}' is not a day; use mon, tue, wed, thu, "
                f"fri, sat, sun{did_you_mean(text, WEEKDAYS)}",
                node.pos,
            )
            return None
        return WEEKDAYS[key]

    def clock(self, node: YNode, path: str, *, allow_24: bool) -> int | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        hh, sep, mm = text.strip().partition(":")
        if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and len(hh) <= 2):
            self.p.report.error(
                "E-TIME", path, f"'{text}' is not a time of day like \"08:00\"", node.pos
            )
            return None
        seconds = int(hh) * 3600 + int(mm) * 60
        limit = DAY_SECONDS if allow_24 else DAY_SECONDS - 60
        if int(mm) > 59 or seconds > limit:
            self.p.report.error(
                "E-TIME",
                path,
                f"'{text}' is not a time between 00:00 and {'24:00' if allow_24 else '23:59'}",
                node.pos,
            )
            return None
        return seconds

    def rate(self, m: dict[str, YNode]) -> RateLimit | None:
        if "rate_limit_rps" not in m:
            if "burst" in m:
                self.p.report.error(
                    "E-MISSING-KEY",
                    self.at("rate_limit_rps"),
                    "burst needs rate_limit_rps",
                    m["burst"].pos,
                )
            return None
        rate = self.f.integer(m["rate_limit_rps"], self.at("rate_limit_rps"), 1, 1_000_000)
        burst = (
            self.f.integer(m["burst"], self.at("burst"), 1, 10_000_000) if "burst" in m else rate
        )
        if rate is None or burst is None:
            return None
        action = m.get("action")
        if action is not None and str(action.value).lower() != "allow":
            self.p.report.error(
                "E-RATE-ACTION",
                self.at("rate_limit_rps"),
                "a rate limit only applies to allow rules (it drops what exceeds the rate)",
                m["rate_limit_rps"].pos,
            )
            return None
        return RateLimit(rate, burst)


_FULL_DAYS = {
    "mon": "monday",
    "tue": "tuesday",
    "wed": "wednesday",
    "thu": "thursday",
    "fri": "friday",
    "sat": "saturday",
    "sun": "sunday",
}
