"""The typed policy model (layer L1, pure): frozen, slotted dataclasses, values parsed once.

Owns: Policy, Settings, Zone, Service, Rule and the value types (PortRange, TimeWindow,
RateLimit). Nothing here holds a raw string that still needs parsing.
Must not import adapters, the compiler or anything that does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REJECT = "reject"


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"  # ICMP for IPv4 and ICMPv6 for IPv6
    ANY = "any"


PORT_PROTOCOLS = (Protocol.TCP, Protocol.UDP)


class AppliesTo(StrEnum):
    """What a rule governs: the host's own ports, or routed traffic inbound to containers."""

    HOST = "host"
    CONTAINERS = "containers"


# nftables numbers the days of the week from Sunday = 0.
WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
DAY_SECONDS = 86_400


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    lo: int
    hi: int

    @classmethod
    def parse(cls, value: int | str) -> PortRange:
        """`443` or `"8000-8100"`; raises ValueError with a message fit for a diagnostic."""
        text = str(value).strip()
        lo_text, sep, hi_text = text.partition("-")
        if not lo_text.strip().isdigit() or (sep and not hi_text.strip().isdigit()):
            raise ValueError(f"'{text}' is not a port or a range like 8000-8100")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        for port in (lo, hi):
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is out of range 1-65535")
        if hi < lo:
            raise ValueError(f"range {lo}-{hi} is backwards; write {hi}-{lo}")
        return cls(lo, hi)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def merge_ranges(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, coalesced ranges: nftables rejects overlapping intervals in one set."""
    out: list[PortRange] = []
    for r in sorted(ranges):
        if out and r.lo <= out[-1].hi + 1:
            out[-1] = PortRange(out[-1].lo, max(out[-1].hi, r.hi))
        else:
            out.append(r)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PortMatch:
    """Destination ports of one transport protocol (tcp or udp)."""

    protocol: Protocol
    ranges: tuple[PortRange, ...]

    def covers(self, port: int) -> bool:
        return any(port in r for r in self.ranges)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days and a time of day, in UTC or in the IANA zone `tz` (policy/timezones.py).
    `end <= start` means the window crosses midnight."""

    days: frozenset[int]
    start: int  # seconds after midnight
    end: int  # seconds after midnight, 1..86400
    tz: str | None = None  # None: UTC

    def contains(self, weekday: int, second_of_day: int) -> bool:
        """`weekday` uses nftables' numbering (Sunday = 0)."""
        if self.start < self.end:
            return weekday in self.days and self.start <= second_of_day < self.end
        if second_of_day >= self.start:
            return weekday in self.days
        return (weekday - 1) % 7 in self.days and second_of_day < self.end


@dataclass(frozen=True, slots=True)
class RateLimit:
    """New connections per second per source address, token bucket of `burst`."""

    rate: int
    burst: int


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    ports: tuple[PortRange, ...]
    protocol: Protocol
    description: str = ""


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    cidrs: tuple[IPNetwork, ...]
    description: str = ""
    containers: bool = False  # routed traffic to it is inbound to containers (docs/policy.md)
    list: str | None = None  # its sources are a prefix list's (policy/geo.py); cidrs ()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    zones: tuple[str, ...] | None  # None: any source, whatever its zone
    protocol: Protocol
    ports: tuple[PortMatch, ...]  # resolved from dest_ports and dest_services; () = any port
    services: tuple[str, ...]
    source_cidrs: tuple[IPNetwork, ...]
    time_window: TimeWindow | None
    rate_limit: RateLimit | None
    log: bool
    description: str = ""
    path_prefix: str | None = None  # layer 7: evaluator and middleware only
    authenticated: bool | None = None  # layer 7: evaluator and middleware only
    applies_to: AppliesTo | None = None  # None: the host's own ports and containers alike
    source_countries: tuple[str, ...] = ()  # ISO 3166-1 alpha-2 (policy/geo.py)
    source_lists: tuple[str, ...] = ()  # names of `lists:` entries

    @property
    def unconditional(self) -> bool:
        """True when the rule matches every new connection of its zones."""
        return (
            self.protocol is Protocol.ANY
            and not self.ports
            and not self.source_cidrs
            and self.time_window is None
            and self.rate_limit is None
            and self.path_prefix is None
            and self.authenticated is None
            and not self.source_countries
            and not self.source_lists
        )


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """A port scan: one source touching `ports` distinct denied ports within `window` s."""

    ports: int = 10
    window: int = 10


@dataclass(frozen=True, slots=True)
class Settings:
    default_policy: Action = Action.DENY
    egress_default_policy: Action = Action.ALLOW
    log_denied: bool = True
    log_allowed: bool = False
    max_connections_per_ip: int = 500
    syn_flood_threshold: int = 50
    connection_idle_timeout: int | None = None  # seconds; None: the kernel's (nft/idle.py)
    rule_reload_interval: int = 30
    admin_ports: tuple[int, ...] = (22,)
    scan: ScanSettings = field(default_factory=ScanSettings)
    # seconds a source stays over a connection limit or keeps flooding before it becomes a
    # threat event (a burst that ends within the grace period is only refused by the kernel)
    detection_grace: int = 2
    # decision records (docs/audit.md): lines per second per rule at most, 0 = none; and
    # whether every /v1/evaluate answer is recorded (a request may ask with `audit: true`)
    audit_decisions: int = 10
    audit_evaluate: bool = False


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# Decay is continuous, so `threshold` events a few seconds apart add up to slightly less
# than `threshold`; 2% slack makes a burst of `threshold` events (within ~2 minutes at the
# default half-life of 1 h) block, as the seed's "5 threat events → TEMP_BLOCK" promises.
THRESHOLD_SLACK = 0.02

DEFAULT_WEIGHTS = {
    Severity.LOW: 1.0,
    Severity.MEDIUM: 1.0,
    Severity.HIGH: 5.0,
    Severity.CRITICAL: 5.0,
}


@dataclass(frozen=True, slots=True)
class ReputationSettings:
    threshold: float = 5.0
    temp_block: int = 900
    permanent_after: int = 3
    memory: int = 7 * 86_400
    decay_half_life: int = 3600
    severity_weights: dict[Severity, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    ipv6_prefix: int = 64
    never_block: tuple[IPNetwork, ...] = ()


NOTIFY_EVENTS = ("block", "permanent", "unblock", "expire")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where the firewall reports blocks it decided on its own (seed: firewall → Sentry)."""

    url: str
    events: frozenset[str] = frozenset({"block", "permanent"})
    timeout: float = 5.0
    name: str | None = None  # the receiver, as threat events name their `reporter`


@dataclass(frozen=True, slots=True)
class NotifySettings:
    webhooks: tuple[Webhook, ...] = ()
    queue: int = 1000  # notifications waiting at most; beyond, new ones are dropped and counted
    retries: int = 3


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One named outbound rule: destination (addresses or a host name the daemon resolves),
    protocol, destination ports, verdict. First match wins, after the built-ins."""

    name: str
    action: Action
    destinations: tuple[IPNetwork, ...]  # () when `host` is set
    host: str | None
    protocol: Protocol
    ports: tuple[PortRange, ...]  # () = any port
    log: bool = True


@dataclass(frozen=True, slots=True)
class DnsBounds:
    """Bounds on TTL-driven re-resolution, and how long a vanished address stays allowed."""

    min_refresh: int = 5
    max_refresh: int = 3600
    grace: int = 600


@dataclass(frozen=True, slots=True)
class Egress:
    """The `egress:` section: what the host may reach (see policy/egress.py)."""

    default_action: Action = Action.DENY
    resolvers: tuple[IPAddress, ...] = ()
    rules: tuple[EgressRule, ...] = ()
    domains: tuple[str, ...] = ()
    allow_ips: tuple[IPNetwork, ...] = ()
    allow_ports: tuple[PortRange, ...] = ()  # () = any port
    known_good: tuple[IPNetwork, ...] = ()
    known_bad: tuple[IPNetwork, ...] = ()
    dns: DnsBounds = field(default_factory=DnsBounds)

    def hosts(self) -> dict[str, tuple[str, ...]]:
        """Every name the daemon resolves -> the domain set bases it fills."""
        out: dict[str, list[str]] = {}
        for d in self.domains:
            out.setdefault(d, []).append("egress_dom")
        for r in self.rules:
            if r.host is not None:
                out.setdefault(r.host, []).append(f"erule_{r.name}")
        return {k: tuple(v) for k, v in sorted(out.items())}


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """The `sandbox:` section: bounds on time-limited grants made through the socket."""

    max_ttl: int = 86_400
    default_ttl: int = 3600
    allowed_ports: tuple[PortRange, ...] = ()  # () = any port
    # the shortest prefix a caller without the admin role may be granted, per family
    min_prefix_v4: int = 24
    min_prefix_v6: int = 48
    # live grants at most, in total and per scope (one address or prefix is one grant)
    max_grants: int = 10_000
    max_grants_per_scope: int = 1_000


@dataclass(frozen=True, slots=True)
class JournalPattern:
    """A regular expression over a journal entry's MESSAGE; its named group `address` is
    the offender. A match is one threat event of `type` and `severity`."""

    regex: re.Pattern[str]
    type: str
    severity: Severity


@dataclass(frozen=True, slots=True)
class JournalSource:
    """One `journal:` entry (policy/journal.py): which entries (journal field -> accepted
    values; all fields must match) and the patterns tried on their MESSAGE, in order."""

    name: str
    match: tuple[tuple[str, tuple[str, ...]], ...]
    patterns: tuple[JournalPattern, ...]
    builtin: str | None = None
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GeoIP:
    """The `geoip:` section: a MaxMind DB format country database and the countries whose
    sources are dropped before any rule."""

    database: str
    block_countries: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PrefixList:
    """One `lists:` entry: prefixes read from a file; `deny` drops them before any rule,
    `match` only makes them usable in rules (`source_lists`) and zones (`list`)."""

    name: str
    path: str
    action: str = "match"  # deny | match


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    settings: Settings
    zones: tuple[Zone, ...]
    services: tuple[Service, ...]
    rules: tuple[Rule, ...]
    sha256: str  # of the source text(s) it was parsed from
    reputation: ReputationSettings = field(default_factory=ReputationSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    includes: tuple[str, ...] = ()  # other files it was read from (services_file)
    egress: Egress | None = None  # None: outbound is not filtered in the kernel
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    journal: tuple[JournalSource, ...] = ()  # threats read from the journal
    geoip: GeoIP | None = None  # country sets (policy/geo.py)
    lists: tuple[PrefixList, ...] = ()  # named prefix lists (policy/geo.py)

    def zone(self, name: str) -> Zone:
        for z in self.zones:
            if z.name == name:
                return z
        raise KeyError(name)
