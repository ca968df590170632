"""The daemon's own configuration (TOML) (layer L1, pure).

Owns: `DaemonConfig` with defaults; validating the TOML text like the policy — every
problem reported at once, each located and coded (`aitherfwd.toml:7:1: error[E-CONFIG-RANGE]
daemon.drift_check_interval: 0 is out of range 0.1-3600 seconds`): types, ranges, unknown
keys (with did-you-mean), user and group names, the `[roles]` members (the roles
themselves and `Authorizer` are aitherfwd/roles.py). tomllib keeps no positions, so
`_KeyLines` finds each key's line in the text. User and group names are resolved through
functions the caller passes in (the daemon passes pwd/grp). Must not import adapters or do I/O.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.control.limits import KEYS as LIMIT_KEYS
from aitherfwd.control.limits import ControlLimits, check_limits
from aitherfwd.durations import parse_duration
from aitherfwd.errors import AitherError, ExitCode
from aitherfwd.fleet.settings import FleetSettings, check_fleet
from aitherfwd.policy.diagnostics import Diagnostic, Pos, Reporter, did_you_mean, report_lines
from aitherfwd.roles import ROLES, RoleMembers

Resolver = Callable[[str], int]  # name -> id; raises KeyError when unknown


class ConfigError(AitherError):
    """The daemon config is invalid or unreadable; `diagnostics` has every problem."""

    code = "E-CONFIG"
    exit_code = ExitCode.USAGE

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        diagnostics: Sequence[Diagnostic] = (),
        **context: object,
    ) -> None:
        super().__init__(message, code=code, **context)
        self.diagnostics = list(diagnostics)

    @classmethod
    def of(cls, diagnostics: Sequence[Diagnostic]) -> ConfigError:
        return cls("\n".join(report_lines(diagnostics)), diagnostics=diagnostics)

    @classmethod
    def unreadable(cls, filename: str, reason: str) -> ConfigError:
        return cls.of(
            [_diagnostic("E-CONFIG-FILE", "", f"cannot read: {reason}", Pos(filename, 1, 1))]
        )


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    policy: Path = Path("/etc/aitherfwd/policy.yaml")
    socket: Path = Path("/run/aitherfwd/control.sock")
    socket_mode: int = 0o660
    socket_group: str | None = None
    state_dir: Path = Path("/var/lib/aitherfwd")
    audit_log: Path = Path("/var/log/aitherfwd/audit.jsonl")
    audit_max_bytes: int = 50 << 20  # rotate the audit log at this size
    audit_keep: int = 5  # rotated files kept (audit.jsonl.1 … .5)
    requests_log: Path | None = None  # rejected-request noise; None: requests.jsonl beside audit
    audit_reject_interval: float = 10.0  # at most one rejection line per peer per interval
    metrics_listen: str = "127.0.0.1:9466"  # Prometheus /metrics; "" turns it off
    max_body_bytes: int = 1 << 20
    limits: ControlLimits = field(default_factory=ControlLimits)
    drift_check_interval: float = 2.0
    conntrack_resync_interval: float = 30.0  # full conntrack dump; also after event loss
    roles: dict[str, RoleMembers] = field(default_factory=dict)
    fleet: FleetSettings | None = None  # [fleet] (aitherfwd/fleet/settings.py); None: off


SECTIONS = {
    "control": ("socket", "mode", "group", "max_body_bytes", *LIMIT_KEYS),
    "daemon": (
        "policy",
        "state_dir",
        "audit_log",
        "audit_max_bytes",
        "audit_keep",
        "requests_log",
        "audit_reject_interval",
        "drift_check_interval",
        "conntrack_resync_interval",
    ),
    "metrics": ("listen",),
    "roles": ROLES,
}
# (low, high) bounds; intervals have a floor so that a typo cannot make a busy loop
MAX_BODY_BYTES = (1, 1 << 30)
AUDIT_MAX_BYTES = (1, 1 << 40)
AUDIT_KEEP = (1, 1000)
DRIFT_CHECK_INTERVAL = (0.1, 3600.0)
CONNTRACK_RESYNC_INTERVAL = (1.0, 86_400.0)
AUDIT_REJECT_INTERVAL = (1.0, 3600.0)
MODE_MAX = 0o777
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def parse_config(
    text: str,
    users: Resolver,
    groups: Resolver,
    filename: str = "aitherfwd.toml",
    hostname: str = "",
) -> DaemonConfig:
    """The config, or ConfigError carrying every problem of the text, each located."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        line, col = (int(at[1]), int(at[2])) if at else (max(1, text.count("\n")), 1)
        raise ConfigError.of(
            [
                _diagnostic(
                    "E-CONFIG-TOML",
                    "",
                    f"invalid TOML: {_TOML_AT.sub('', message)}",
                    Pos(filename, line, col),
                )
            ]
        ) from None
    check = _Checker(_KeyLines(text), filename, users, groups)
    check.hostname = hostname  # [fleet] host's default
    cfg = check.config(data)
    if check.report.items:
        raise ConfigError.of(check.report.sorted())
    return cfg


def _diagnostic(code: str, path: str, message: str, pos: Pos) -> Diagnostic:
    report = Reporter()
    report.error(code, path, message, pos)
    return report.items[0]


class _KeyLines:
    """Where each dotted key (`daemon.audit_keep`, `roles.sandbox.max_ttl`) is written:
    table headers, `key = value` lines and the keys of one-line inline tables."""

    _HEADER = re.compile(r"^(\s*)\[\s*([^\[\]]+?)\s*\]")
    _KEY = re.compile(r"^(\s*)([A-Za-z0-9_.\"'-]+?)\s*=")
    _INLINE = re.compile(r"[{,]\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.at: dict[str, tuple[int, int]] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            if m := self._HEADER.match(line):
                table = re.sub(r"[\s\"']", "", m[2])
                self.at.setdefault(table, (number, len(m[1]) + 1))
            elif m := self._KEY.match(line):
                key = ".".join(p.strip().strip("\"'") for p in m[2].split("."))
                path = f"{table}.{key}" if table else key
                self.at.setdefault(path, (number, len(m[1]) + 1))
                for inner in self._INLINE.finditer(line, m.end()):
                    self.at.setdefault(f"{path}.{inner[1]}", (number, inner.start(1) + 1))

    def find(self, path: str) -> tuple[int, int]:
        """The key's place, else its closest enclosing table's, else the file's start."""
        parts = re.sub(r"\[\d+\]", "", path).split(".")
        while parts:
            hit = self.at.get(".".join(parts))
            if hit:
                return hit
            parts.pop()
        return (1, 1)


class _Checker:
    """Reads each value into its typed form, reporting every problem instead of stopping."""

    def __init__(self, lines: _KeyLines, filename: str, users: Resolver, groups: Resolver):
        self.lines, self.filename = lines, filename
        self.users, self.groups = users, groups
        self.report = Reporter()
        self.hostname = ""

    def error(self, code: str, path: str, message: str) -> None:
        line, col = self.lines.find(path)
        self.report.error(code, path, message, Pos(self.filename, line, col))

    def config(self, data: dict[str, Any]) -> DaemonConfig:
        top = self.table(data, "", (*SECTIONS, "fleet"))
        s = {name: self.table(top.get(name, {}), name, keys) for name, keys in SECTIONS.items()}
        control, daemon, metrics = s["control"], s["daemon"], s["metrics"]
        d = DaemonConfig()
        return DaemonConfig(
            policy=self.path(daemon, "daemon.policy", d.policy),
            socket=self.path(control, "control.socket", d.socket),
            socket_mode=self.mode(control, "control.mode", d.socket_mode),
            socket_group=self.group(control, "control.group"),
            state_dir=self.path(daemon, "daemon.state_dir", d.state_dir),
            audit_log=self.path(daemon, "daemon.audit_log", d.audit_log),
            audit_max_bytes=self.integer(
                daemon, "daemon.audit_max_bytes", d.audit_max_bytes, AUDIT_MAX_BYTES
            ),
            audit_keep=self.integer(daemon, "daemon.audit_keep", d.audit_keep, AUDIT_KEEP),
            requests_log=self.optional_path(daemon, "daemon.requests_log"),
            audit_reject_interval=self.seconds(
                daemon, "daemon.audit_reject_interval", 10.0, AUDIT_REJECT_INTERVAL
            ),
            metrics_listen=self.listen(metrics, "metrics.listen", d.metrics_listen),
            max_body_bytes=self.integer(
                control, "control.max_body_bytes", d.max_body_bytes, MAX_BODY_BYTES
            ),
            limits=check_limits(self, control),
            drift_check_interval=self.seconds(
                daemon,
                "daemon.drift_check_interval",
                d.drift_check_interval,
                DRIFT_CHECK_INTERVAL,
            ),
            conntrack_resync_interval=self.seconds(
                daemon,
                "daemon.conntrack_resync_interval",
                d.conntrack_resync_interval,
                CONNTRACK_RESYNC_INTERVAL,
            ),
            roles={name: self.members(v, name) for name, v in s["roles"].items()},
            fleet=check_fleet(self, top.get("fleet"), self.hostname),
        )

    def table(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any]:
        """The known keys of a table; each unknown one is reported."""
        if not isinstance(value, dict):
            self.error("E-CONFIG-TYPE", path, f"must be a table, got {_kind(value)}")
            return {}
        known = {}
        for key, item in value.items():
            if key in allowed:
                known[key] = item
                continue
            hint = did_you_mean(key, allowed) or f"; allowed: {', '.join(allowed)}"
            self.error("E-CONFIG-UNKNOWN-KEY", _join(path, key), f"unknown key '{key}'{hint}")
        return known

    def path(self, section: dict[str, Any], path: str, default: Path) -> Path:
        value = section.get(_last(path), str(default))
        if not isinstance(value, str) or not value or "\0" in value:
            self.error("E-CONFIG-TYPE", path, f"must be a file path, got {_kind(value)}")
            return default
        return Path(value)

    def optional_path(self, section: dict[str, Any], path: str) -> Path | None:
        return self.path(section, path, Path()) if _last(path) in section else None

    def integer(
        self, section: dict[str, Any], path: str, default: int, bounds: tuple[int, int]
    ) -> int:
        value = section.get(_last(path), default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("E-CONFIG-TYPE", path, f"must be an integer, got {_kind(value)}")
            return default
        lo, hi = bounds
        if not lo <= value <= hi:
            self.error("E-CONFIG-RANGE", path, f"{value} is out of range {lo}-{hi}")
            return default
        return value

    def seconds(
        self, section: dict[str, Any], path: str, default: float, bounds: tuple[float, float]
    ) -> float:
        value = section.get(_last(path), default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error("E-CONFIG-TYPE", path, f"must be a number of seconds, got {_kind(value)}")
            return default
        lo, hi = bounds
        if not lo <= value <= hi:
            self.error("E-CONFIG-RANGE", path, f"{value} is out of range {lo:g}-{hi:g} seconds")
            return default
        return float(value)

    def mode(self, section: dict[str, Any], path: str, default: int) -> int:
        """An octal string such as "0660", or a TOML integer such as 0o660."""
        value = section.get(_last(path), default)
        want = 'must be an octal string like "0660", got'
        if isinstance(value, str):
            try:
                mode = int(value, 8)
            except ValueError:
                self.error("E-CONFIG-VALUE", path, f"{want} {value!r}")
                return default
        elif isinstance(value, int) and not isinstance(value, bool):
            mode = value
        else:
            self.error("E-CONFIG-TYPE", path, f"{want} {_kind(value)}")
            return default
        if not 0 <= mode <= MODE_MAX:
            self.error("E-CONFIG-RANGE", path, f"{mode:#o} is out of range 0o0-0o777")
            return default
        return mode

    def group(self, section: dict[str, Any], path: str) -> str | None:
        value = section.get(_last(path))
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.error("E-CONFIG-TYPE", path, f"must be a group name, got {_kind(value)}")
            return None
        try:
            self.groups(value)
        except KeyError:
            self.error("E-CONFIG-UNKNOWN-ID", path, f"no such group '{value}'")
            return None
        return value

    def listen(self, section: dict[str, Any], path: str, default: str) -> str:
        """ "" (off), or HOST:PORT with a bracketed IPv6 host: `[::1]:9466`."""
        value = section.get(_last(path), default)
        if not isinstance(value, str):
            self.error("E-CONFIG-TYPE", path, f'must be a string "HOST:PORT", got {_kind(value)}')
            return default
        host, sep, port = value.rpartition(":")
        if value and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
            self.error(
                "E-CONFIG-VALUE",
                path,
                'must be "HOST:PORT" (e.g. "127.0.0.1:9466", "[::1]:9466") '
                f'or "" to turn metrics off, got {value!r}',
            )
            return default
        return value

    def members(self, value: Any, role: str) -> RoleMembers:
        where = f"roles.{role}"
        keys = ("users", "groups", "max_ttl") if role == "sandbox" else ("users", "groups")
        table = self.table(value, where, keys)
        max_ttl = None
        if "max_ttl" in table:
            try:
                max_ttl = parse_duration(table["max_ttl"])
            except ValueError as exc:
                self.error("E-CONFIG-VALUE", f"{where}.max_ttl", str(exc))
        return RoleMembers(
            frozenset(self.ids(table.get("users", []), self.users, f"{where}.users", "user")),
            frozenset(self.ids(table.get("groups", []), self.groups, f"{where}.groups", "group")),
            max_ttl,
        )

    def ids(self, items: Any, resolve: Resolver, path: str, what: str) -> list[int]:
        if not isinstance(items, list):
            self.error("E-CONFIG-TYPE", path, f"must be a list of {what} names or numeric ids")
            return []
        out = []
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, int | str):
                self.error("E-CONFIG-TYPE", f"{path}[{i}]", f"{item!r} is neither a name nor an id")
            elif isinstance(item, int) and item < 0:
                self.error("E-CONFIG-RANGE", f"{path}[{i}]", f"{item} is not a valid id")
            elif isinstance(item, int):
                out.append(item)
            else:
                try:
                    out.append(resolve(item))
                except KeyError:
                    self.error("E-CONFIG-UNKNOWN-ID", f"{path}[{i}]", f"no such {what} '{item}'")
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _last(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _kind(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = ((str, "a string"), (int, "an integer"), (float, "a float"), (dict, "a table"))
    other = "an array" if isinstance(value, list) else f"a {type(value).__name__}"
    return next((name for kind, name in kinds if isinstance(value, kind)), other)
