"""The registry of every error and warning code aitherfwd uses (layer L0).

Owns: one `Code` per code — what it means, the HTTP status the control API answers with
when an error answer carries it, and the exit code of a command that ends on it. Statuses
live here and nowhere else: the pure core raises coded errors, the API layer looks the
status up (`http_status`). A unit test scans the package for code literals and fails when
one is used but not registered here, or registered but unused; another keeps the table in
docs/errors.md equal to `markdown_table()`.

`http` is None for codes that are never the code of an API error answer (policy and config
diagnostics — a rejected reload is a 200 whose `errors` list carries them —, CLI-only and
client-side codes). `exit` is None where no command ends on the code (warnings).
Must not import anything from aitherfwd but `errors`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aitherfwd.errors import ExitCode


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    area: str  # policy | config | request | kernel | transport | daemon | client
    meaning: str
    http: int | None = None
    exit: ExitCode | None = None


_POLICY = ExitCode.INVALID_POLICY
_CONFIG = ExitCode.USAGE
_FAIL = ExitCode.FAILURE


def _area(area: str, exit_code: ExitCode | None, rows: Iterable[tuple[str, str]]) -> list[Code]:
    return [Code(code, area, meaning, None, exit_code) for code, meaning in rows]


_POLICY_ERRORS = (
    ("E-POLICY", "the policy is invalid or cannot be loaded; its diagnostics say why"),
    ("E-FILE", "the policy (or a file it names) cannot be read"),
    ("E-YAML", "the policy is not valid YAML, or its aliases expand too far"),
    ("E-DUPLICATE-KEY", "a key appears twice in one YAML mapping"),
    ("E-TYPE", "a value has the wrong type (e.g. a list where a mapping belongs)"),
    ("E-UNKNOWN-KEY", "a key the policy schema does not know (with a did-you-mean)"),
    ("E-MISSING-KEY", "a required key is missing, or one key needs another"),
    ("E-EMPTY", "a list that must not be empty is empty"),
    ("E-NAME", "a zone, service or rule name breaks the naming rule"),
    ("E-DUPLICATE-NAME", "two zones, services or rules share a name"),
    ("E-ENUM", "a value is not one of the allowed words"),
    ("E-RANGE", "a number is out of its allowed range"),
    ("E-PORT-RANGE", "a port or port range is malformed or out of 1-65535"),
    ("E-PROTOCOL", "a protocol does not fit the ports or services it is used with"),
    ("E-CIDR", "an address or CIDR cannot be parsed"),
    ("E-DURATION", 'a duration cannot be parsed (use "15m", "1h", "7d" or seconds)'),
    ("E-DAY", "a time window names a day that does not exist"),
    ("E-TIME", "a time window's times are malformed or empty"),
    ("E-TIMEZONE", "a time window names a time zone other than UTC"),
    ("E-UNKNOWN-ZONE", "a rule names a zone the policy does not define"),
    ("E-UNKNOWN-SERVICE", "a rule names a service the services file does not define"),
    ("E-SERVICES-FILE", "the services file cannot be read or parsed"),
    ("E-RATE-ACTION", "a rate limit on a rule that does not allow"),
    ("E-ZONE-SHADOWED", "a zone can never match: earlier zones cover all its CIDRs"),
    ("E-URL", "a notification URL is not http(s) with a host"),
    ("E-DIRECTION", "an egress rule that is not outbound"),
    ("E-DOMAIN", "a host name that is not a valid DNS name"),
    ("E-DESTINATION", "an egress destination that is neither a host name, an IP nor a CIDR"),
    ("E-SANDBOX-TTL", "sandbox.default_ttl is above sandbox.max_ttl"),
    ("E-DNS-REFRESH", "egress.dns.min_refresh is above max_refresh"),
    ("E-JOURNAL-SOURCE", "a journal source mixes `builtin` with a custom source's keys"),
    ("E-JOURNAL-REGEX", "a journal pattern is not a regular expression (or too long)"),
    ("E-JOURNAL-ADDRESS-GROUP", "a journal pattern has no named group `address`"),
    (
        "E-THREAT-TYPE",
        "a journal source's threat type is not 1-64 letters, digits, '_', '-', '.' characters",
    ),
    ("E-CONTAINER-ZONE", "a zone holding containers covers every address"),
    ("E-COUNTRY", "not an ISO 3166-1 alpha-2 country code (with a did-you-mean)"),
    ("E-NO-GEOIP", "source_countries in a policy without a geoip: section"),
    ("E-UNKNOWN-LIST", "a rule or zone names a prefix list the policy does not define"),
    ("E-GEOIP-PATH", "geoip.database is not an absolute path"),
    ("E-LIST-PATH", "a prefix list's path is not absolute"),
    ("E-ZONE-SOURCE", "a zone has both cidrs and a list, or neither"),
    ("E-GLOB", "a tool policy path pattern is malformed (relative, '..', '**' inside a segment)"),
    ("E-PATTERN", "a tool policy args_blocklist_regex entry does not compile"),
    ("E-TOOL-CONFLICT", "a tool policy both allows and denies the same tool"),
)
_POLICY_WARNINGS = (
    ("W-CIDR-SHADOWED", "a zone CIDR already covered by earlier zones"),
    ("W-RULE-UNREACHABLE", "a rule that earlier rules always decide first"),
    ("W-LAYER7", "a rule condition the kernel cannot see (path, authenticated)"),
    ("W-KNOWN-BAD-WINS", "an egress allowance overlapping known_bad, which always wins"),
    ("W-UNRESOLVED", "`check`: an egress host name does not resolve now"),
    ("W-JOURNAL-UNMATCHED", "a journal pattern no example fits, or an example no pattern reads"),
    ("W-JOURNAL-NO-EXAMPLES", "a custom journal source without example lines to check"),
    ("W-JOURNAL-FORGEABLE", "a journal match any local user can satisfy (no trusted field)"),
    ("W-NO-CONTAINER-ZONE", "a rule applies to containers but no zone holds containers"),
    ("W-FORWARDING", "`check`: the host forwards packets but no zone holds containers"),
)
_CONFIG_ERRORS = (
    ("E-CONFIG", "the daemon config is invalid or cannot be read; its diagnostics say why"),
    ("E-CONFIG-FILE", "the daemon config file cannot be read"),
    ("E-CONFIG-TOML", "the daemon config is not valid TOML"),
    ("E-CONFIG-UNKNOWN-KEY", "a key the daemon config does not know (with a did-you-mean)"),
    ("E-CONFIG-TYPE", "a config value has the wrong type"),
    ("E-CONFIG-RANGE", "a config number is out of its allowed range"),
    ("E-CONFIG-VALUE", "a config value is malformed (mode, listen address, duration)"),
    ("E-CONFIG-UNKNOWN-ID", "a role names a user or group that does not exist"),
)
# (code, meaning, HTTP status): what a control request gets back
_REQUEST_ERRORS = (
    ("E-JSON", "the request body is not valid JSON", 400),
    ("E-SCHEMA", "the request does not fit the endpoint's schema", 400),
    ("E-ADDRESS", "not one valid IP address (or prefix where one is allowed)", 400),
    ("E-TTL", "a ttl that is not a duration", 400),
    ("E-TOO-MANY", "more items in one request than the endpoint takes", 413),
    ("E-FORBIDDEN", "the peer lacks the role the endpoint needs", 403),
    ("E-NOT-FOUND", "no such endpoint", 404),
    ("E-METHOD", "the endpoint exists but not with this method", 405),
    ("E-NOT-BLOCKED", "unblock of an address that is not blocked", 404),
    ("E-PROTECTED", "the address is never blocked (loopback, management zone, never_block)", 409),
    ("E-BLOCK-OVERLAP", "a prefix block overlapping another (live, or in the request)", 409),
    ("E-NOT-GRANTED", "revoke of a destination without a live sandbox grant", 404),
    ("E-NO-EGRESS", "a sandbox grant while the policy has no egress section", 409),
    ("E-NO-RESOLVERS", "host names are needed but the policy lists no egress.resolvers", 409),
    ("E-RESOLVE", "a host name does not resolve", 422),
    ("E-GRANT-REFUSED", "a grant to a destination that is never granted (known_bad, …)", 403),
    ("E-GRANT-OVERLAP", "a grant overlapping a live one in the same kernel set", 409),
    ("E-GRANT-TOO-WIDE", "a prefix shorter than sandbox.min_prefix_v4/v6 (non-admin)", 403),
    ("E-GRANT-LIMIT", "sandbox.max_grants or max_grants_per_scope live grants reached", 429),
    ("E-RATE-LIMITED", "a non-admin peer uid is over its request budget per second", 429),
    ("E-PORT-NOT-ALLOWED", "a grant for a port outside sandbox.allowed_ports", 403),
    ("E-TTL-TOO-LONG", "a grant longer than the caller's role may give", 403),
    ("E-KERNEL-REFUSED", "the kernel refused the element change the request made", 409),
    ("E-WATCH-LIMIT", "over [control] watchers or watchers_per_uid open watch streams", 429),
    ("E-GW-UNAUTHORIZED", "gateway: agent tokens are configured and none valid was sent", 401),
    ("E-GW-RELOAD-REJECTED", "gateway: the reloaded tool policy is invalid; it kept its own", 422),
    ("E-FLEET-OFF", "a fleet request while the daemon config has no [fleet] section", 409),
)
_TRANSPORT_ERRORS = (
    ("E-HTTP-BAD-REQUEST", "malformed HTTP on the control socket", 400),
    ("E-HTTP-TIMEOUT", "the request did not arrive completely in time", 408),
    ("E-HTTP-BODY-TOO-LARGE", "the request body is over the endpoint's limit", 413),
    ("E-HTTP-HEADERS-TOO-LARGE", "the request line and headers are over 16 KiB", 431),
    ("E-HTTP-NOT-IMPLEMENTED", "an HTTP feature the control socket does not implement", 501),
    ("E-HTTP-BUSY", "too many connections on the control socket", 503),
    ("E-INTERNAL", "a bug: an unexpected exception; the daemon log has the traceback", 500),
)

REGISTRY: dict[str, Code] = {
    c.code: c
    for c in (
        *_area("policy", _POLICY, _POLICY_ERRORS),
        *_area("policy", None, _POLICY_WARNINGS),
        *_area("config", _CONFIG, _CONFIG_ERRORS),
        *(Code(code, "request", meaning, http, _FAIL) for code, meaning, http in _REQUEST_ERRORS),
        *(Code(c, "transport", m, http, _FAIL) for c, m, http in _TRANSPORT_ERRORS),
        Code(
            "E-APPLY",
            "kernel",
            "the kernel refused a transaction; none of it applied",
            None,
            ExitCode.KERNEL,
        ),
        Code(
            "E-KERNEL-UNAVAILABLE",
            "kernel",
            "libnftables or netlink cannot be used (missing library, no CAP_NET_ADMIN)",
            503,
            ExitCode.KERNEL,
        ),
        Code(
            "E-CONNTRACK",
            "kernel",
            "a conntrack query or delete was refused by the kernel (its netlink errno)",
            None,
            _FAIL,
        ),
        Code("E-CONTROL-SOCKET", "daemon", "the control socket cannot be created", None, _FAIL),
        Code("E-JOURNAL", "daemon", "the journal cannot be opened or read", None, _FAIL),
        Code(
            "E-GEO-READ",
            "daemon",
            "a GeoIP database or list file cannot be read; its last good contents stay",
            None,
            _FAIL,
        ),
        Code("E-FLEET-BUS", "daemon", "the fleet's NATS bus is unreachable (retried)", None, _FAIL),
        Code(
            "E-FLEET-NO-CLIENT",
            "daemon",
            "[fleet] is configured but nats-py (the `fleet` extra) is not installed",
            None,
            _CONFIG,
        ),
        Code(
            "E-LOCKOUT",
            "daemon",
            "a reload refused: it would cut live admin sessions",
            None,
            _POLICY,
        ),
        Code(
            "E-DAEMON-UNAVAILABLE",
            "client",
            "the daemon cannot be reached on its socket",
            None,
            _FAIL,
        ),
        Code(
            "E-DAEMON-PROTOCOL",
            "client",
            "the control socket answered, but not with JSON",
            None,
            _FAIL,
        ),
        Code("E-HTTP", "client", "an error answer that carries no code of its own", None, _FAIL),
    )
}


def lookup(code: str) -> Code:
    """The registered code; an unregistered one is a bug, reported as `E-INTERNAL`."""
    return REGISTRY.get(code) or REGISTRY["E-INTERNAL"]


def http_status(code: str) -> int:
    """The status of an API error answer carrying `code`: 500 when it is not meant for one."""
    return lookup(code).http or 500


def exit_code(code: str) -> ExitCode:
    return lookup(code).exit or ExitCode.FAILURE


def markdown_table() -> str:
    """docs/errors.md's table, in registry order."""
    lines = ["| code | area | HTTP | exit | meaning |", "|---|---|---|---|---|"]
    for c in REGISTRY.values():
        http = str(c.http) if c.http is not None else "-"
        ex = str(int(c.exit)) if c.exit is not None else "-"
        lines.append(f"| `{c.code}` | {c.area} | {http} | {ex} | {c.meaning} |")
    return "\n".join(lines) + "\n"
