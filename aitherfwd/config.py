"""The daemon's own configuration (TOML) and who may do what (layer L1, pure).

Owns: `DaemonConfig` with defaults, strict parsing of the TOML text (unknown keys are
errors), and `Authorizer`, which maps a peer's uid/gid/groups to roles. User and group
names are resolved through functions the caller passes in (the daemon passes pwd/grp).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.durations import parse_duration

ROLES = ("read", "report", "sandbox", "admin")

Resolver = Callable[[str], int]  # name -> id; raises KeyError when unknown


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RoleMembers:
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    max_ttl: int | None = None  # sandbox role: the longest grant its members may ask for


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
    metrics_listen: str = "127.0.0.1:9466"  # Prometheus /metrics; "" turns it off
    max_body_bytes: int = 1 << 20
    drift_check_interval: float = 2.0
    conntrack_resync_interval: float = 30.0  # full conntrack dump; also after event loss
    roles: dict[str, RoleMembers] = field(default_factory=dict)


_CONTROL_KEYS = {"socket", "mode", "group", "max_body_bytes"}
_DAEMON_KEYS = {
    "policy",
    "state_dir",
    "audit_log",
    "audit_max_bytes",
    "audit_keep",
    "drift_check_interval",
    "conntrack_resync_interval",
}
_METRICS_KEYS = {"listen"}


def parse_config(text: str, users: Resolver, groups: Resolver) -> DaemonConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    _keys(data, {"control", "daemon", "metrics", "roles"}, "")
    control = _keys(data.get("control", {}), _CONTROL_KEYS, "control")
    daemon = _keys(data.get("daemon", {}), _DAEMON_KEYS, "daemon")
    metrics = _keys(data.get("metrics", {}), _METRICS_KEYS, "metrics")
    roles_raw = _keys(data.get("roles", {}), set(ROLES), "roles")
    d = DaemonConfig()
    try:
        mode = int(str(control.get("mode", "0660")), 8)
    except ValueError:
        raise ConfigError('control.mode must be an octal string like "0660"') from None
    return DaemonConfig(
        policy=Path(daemon.get("policy", d.policy)),
        socket=Path(control.get("socket", d.socket)),
        socket_mode=mode,
        socket_group=control.get("group"),
        state_dir=Path(daemon.get("state_dir", d.state_dir)),
        audit_log=Path(daemon.get("audit_log", d.audit_log)),
        audit_max_bytes=_positive(daemon, "audit_max_bytes", d.audit_max_bytes),
        audit_keep=_positive(daemon, "audit_keep", d.audit_keep),
        metrics_listen=_listen(metrics.get("listen", d.metrics_listen)),
        max_body_bytes=int(control.get("max_body_bytes", d.max_body_bytes)),
        drift_check_interval=float(daemon.get("drift_check_interval", d.drift_check_interval)),
        conntrack_resync_interval=_seconds(
            daemon, "conntrack_resync_interval", d.conntrack_resync_interval
        ),
        roles={name: _members(roles_raw[name], name, users, groups) for name in roles_raw},
    )


def _listen(value: Any) -> str:
    """ "" (off), or HOST:PORT with a bracketed IPv6 host: `[::1]:9466`."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if text and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise ConfigError(
            f'metrics.listen must be "HOST:PORT" (e.g. "127.0.0.1:9466", "[::1]:9466") '
            f'or "" to turn metrics off, got {text!r}'
        )
    return text


def _positive(section: dict[str, Any], key: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"daemon.{key} must be a positive integer, got {value!r}")
    return value


def _seconds(section: dict[str, Any], key: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"daemon.{key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _keys(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}] must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"[{where or 'top level'}]: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return value


def _members(value: Any, role: str, users: Resolver, groups: Resolver) -> RoleMembers:
    allowed = {"users", "groups", "max_ttl"} if role == "sandbox" else {"users", "groups"}
    table = _keys(value, allowed, f"roles.{role}")
    max_ttl = None
    if "max_ttl" in table:
        try:
            max_ttl = parse_duration(table["max_ttl"])
        except ValueError as exc:
            raise ConfigError(f"roles.sandbox.max_ttl: {exc}") from None
    return RoleMembers(
        frozenset(_ids(table.get("users", []), users, f"roles.{role}.users")),
        frozenset(_ids(table.get("groups", []), groups, f"roles.{role}.groups")),
        max_ttl,
    )


def _ids(items: Any, resolve: Resolver, where: str) -> list[int]:
    if not isinstance(items, list):
        raise ConfigError(f"{where} must be a list of names or numeric ids")
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        elif isinstance(item, str):
            try:
                out.append(resolve(item))
            except KeyError:
                raise ConfigError(f"{where}: no such user or group '{item}'") from None
        else:
            raise ConfigError(f"{where}: {item!r} is neither a name nor an id")
    return out


class Authorizer:
    """Roles of a peer: root is always admin; admin implies every other role."""

    def __init__(self, roles: dict[str, RoleMembers]) -> None:
        self.roles = roles

    def roles_of(self, uid: int, gid: int, groups: tuple[int, ...]) -> set[str]:
        if uid == 0:
            return set(ROLES)
        gids = {gid, *groups}
        have = {name for name, m in self.roles.items() if uid in m.uids or gids & m.gids}
        return set(ROLES) if "admin" in have else have

    def allows(self, role: str, uid: int, gid: int, groups: tuple[int, ...]) -> bool:
        return role in self.roles_of(uid, gid, groups)
