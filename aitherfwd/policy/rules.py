"""One rule of the policy: its schema, service resolution into port matches, time windows
and rate limits (layer L1, pure). Used by `parse`; cross-rule checks live in `validate`.
"""

from __future__ import annotations

from aitherfwd.policy.diagnostics import Reporter, did_you_mean
from aitherfwd.policy.fields import Fields
from aitherfwd.policy.geo import country_code
from aitherfwd.policy.model import (
    DAY_SECONDS,
    PORT_PROTOCOLS,
    WEEKDAYS,
    Action,
    AppliesTo,
    IPNetwork,
    PortMatch,
    PortRange,
    Protocol,
    RateLimit,
    Rule,
    Service,
    TimeWindow,
    merge_ranges,
)
from aitherfwd.policy.source import YNode
from aitherfwd.policy.timezones import check_zone

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
    "applies_to",
    "source_countries",
    "source_lists",
}
WINDOW_KEYS = {"days", "start", "end", "timezone"}


class RuleParser:
    def __init__(
        self, report: Reporter, path: str, zones: list[str], services: dict[str, Service]
    ) -> None:
        self.report, self.f, self.path = report, Fields(report), path
        self.zone_names, self.services = zones, services

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def rule(self, node: YNode) -> Rule | None:
        m = self.f.mapping(node, self.path, RULE_KEYS, frozenset({"name", "action"}))
        if m is None or "name" not in m or "action" not in m:
            return None
        errors_before = len(self.report.errors)
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
        applies_to = (
            self.f.enum(m["applies_to"], self.at("applies_to"), AppliesTo)
            if "applies_to" in m
            else None
        )
        countries = self.names(m, "source_countries", country=True)
        lists = self.names(m, "source_lists", country=False)
        if len(self.report.errors) > errors_before:
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
            applies_to,
            countries,
            lists,
        )

    def names(self, m: dict[str, YNode], key: str, *, country: bool) -> tuple[str, ...]:
        """`source_countries` (ISO codes, checked here) / `source_lists` (checked against
        the policy's lists in policy/geo.py)."""
        if key not in m:
            return ()
        read = (lambda n, p: country_code(self.f, n, p)) if country else self.f.string
        names = self.f.each(m[key], self.at(key), read, scalar_ok=True)
        if names is None:
            return ()  # reported
        if not names:
            message = f"an empty {key} matches nothing"
            self.report.error("E-EMPTY", self.at(key), message, m[key].pos)
        return tuple(dict.fromkeys(names))

    def zones(self, node: YNode) -> tuple[str, ...] | None:
        names = self.f.each(node, self.at("zone"), self.f.string, scalar_ok=True)
        if names is None:
            return None
        for i, n in enumerate(names):
            if n not in self.zone_names:
                at = node.value[i].pos if node.is_list else node.pos
                self.report.error(
                    "E-UNKNOWN-ZONE",
                    self.at("zone"),
                    f"unknown zone '{n}'{did_you_mean(n, self.zone_names)}",
                    at,
                )
        if not names:
            self.report.error(
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
                self.report.error(
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
            self.report.error(
                "E-UNKNOWN-SERVICE",
                path,
                f"unknown service '{name}'{did_you_mean(name, self.services)}",
                node.pos,
            )
            return False
        if proto is Protocol.ICMP or (
            proto is not Protocol.ANY and svc.protocol not in (proto, Protocol.ANY)
        ):
            self.report.error(
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
        zone = self.zone(m["timezone"], f"{path}.timezone") if "timezone" in m else None
        if days is None or start is None or end is None or zone == "":
            return None
        if start == end % DAY_SECONDS and end != DAY_SECONDS:
            self.report.error(
                "E-TIME",
                path,
                "start and end are equal: the window is empty; "
                "omit time_window to match at all times",
                m["end"].pos,
            )
            return None
        if not days:
            self.report.error(
                "E-EMPTY", f"{path}.days", "no days: the window never opens", m["days"].pos
            )
            return None
        return TimeWindow(frozenset(days), start, end, zone)

    def zone(self, node: YNode, path: str) -> str | None:
        """An IANA zone name; None for UTC, "" (reported) when it is not a zone."""
        tz = self.f.string(node, path)
        if tz is None:
            return ""
        try:
            return check_zone(tz)
        except ValueError as exc:
            self.report.error("E-TIMEZONE", path, str(exc), node.pos)
            return ""

    def day(self, node: YNode, path: str) -> int | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        key = text.strip().lower()[:3]
        if key not in WEEKDAYS or text.strip().lower() not in (key, _FULL_DAYS[key]):
            self.report.error(
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
            self.report.error(
                "E-TIME", path, f"'{text}' is not a time of day like \"08:00\"", node.pos
            )
            return None
        seconds = int(hh) * 3600 + int(mm) * 60
        limit = DAY_SECONDS if allow_24 else DAY_SECONDS - 60
        if int(mm) > 59 or seconds > limit:
            self.report.error(
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
                self.report.error(
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
            self.report.error(
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
