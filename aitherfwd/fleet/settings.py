"""The `[fleet]` table of the daemon config (layer L1, pure).

Owns: `FleetSettings` (servers, fleet name, this host's name, what is shared, credentials,
the publish backlog's bound) and `check_fleet`, which reads the table through the config's
checker so every problem is located and coded like the rest of the config. An absent
table means no fleet. Must not import adapters or do I/O (the machine's host name is
passed in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

KEYS = (
    "servers",
    "name",
    "host",
    "share",
    "creds",
    "user",
    "password",
    "nkey_seed",
    "tls_ca",
    "backlog",
    "replicas",
)
SHARES = ("blocks", "threats", "policy")
# a subject token: no dots, wildcards or spaces (NATS), short enough for stream names
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SERVER = re.compile(r"^(nats|tls)://[^\s/]+:\d{1,5}$")
BACKLOG = (100, 10_000_000)
REPLICAS = (1, 5)
MAX_SERVERS = 32


@dataclass(frozen=True, slots=True)
class FleetSettings:
    servers: tuple[str, ...]
    name: str
    host: str
    share: frozenset[str] = frozenset({"blocks"})
    creds: Path | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed: Path | None = None
    tls_ca: Path | None = None
    backlog: int = 100_000  # decisions waiting to be published, kept in the state store
    replicas: int = 1  # copies of the streams and the bucket a cluster keeps (when created)

    def shares(self, what: str) -> bool:
        return what in self.share


class Checker(Protocol):
    """What `check_fleet` needs of the config's checker (aitherfwd/config.py)."""

    def error(self, code: str, path: str, message: str) -> None: ...

    def table(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]: ...

    def integer(
        self, section: dict[str, Any], path: str, default: int, bounds: tuple[int, int]
    ) -> int: ...


def check_fleet(check: Checker, value: Any, hostname: str) -> FleetSettings | None:
    """The settings of a `[fleet]` table, or None when there is none (or it is invalid:
    the checker then holds every problem)."""
    if value is None:
        return None
    t = check.table(value, "fleet", KEYS)
    servers = _servers(check, t.get("servers"))
    name = _token(check, t, "name", None)
    host = _token(check, t, "host", _host_token(hostname))
    share = _share(check, t.get("share", ["blocks"]))
    paths = {k: _path(check, t, k) for k in ("creds", "nkey_seed", "tls_ca")}
    user, password = _text(check, t, "user"), _text(check, t, "password")
    if (user is None) != (password is None):
        check.error("E-CONFIG-VALUE", "fleet.user", "user and password go together")
    if sum(x is not None for x in (paths["creds"], paths["nkey_seed"], user)) > 1:
        check.error(
            "E-CONFIG-VALUE", "fleet.creds", "give one of creds, nkey_seed or user/password"
        )
    backlog = check.integer(t, "fleet.backlog", 100_000, BACKLOG)
    replicas = check.integer(t, "fleet.replicas", 1, REPLICAS)
    if not servers or name is None or host is None:
        return None
    return FleetSettings(
        servers,
        name,
        host,
        share,
        paths["creds"],
        user,
        password,
        paths["nkey_seed"],
        paths["tls_ca"],
        backlog,
        replicas,
    )


def _servers(check: Checker, value: Any) -> tuple[str, ...]:
    if value is None:
        check.error("E-CONFIG-VALUE", "fleet.servers", 'is required, e.g. ["nats://10.0.0.5:4222"]')
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SERVERS:
        check.error(
            "E-CONFIG-TYPE", "fleet.servers", f"must be a list of 1-{MAX_SERVERS} server URLs"
        )
        return ()
    good = []
    for i, url in enumerate(value):
        if not isinstance(url, str) or not SERVER.match(url) or int(url.rsplit(":", 1)[1]) > 65535:
            check.error(
                "E-CONFIG-VALUE",
                f"fleet.servers[{i}]",
                f'must be "nats://HOST:PORT" or "tls://HOST:PORT", got {url!r}',
            )
        else:
            good.append(url)
    return tuple(good) if len(good) == len(value) else ()


def _token(check: Checker, t: dict[str, Any], key: str, default: str | None) -> str | None:
    value = t.get(key, default)
    if value is None:
        check.error("E-CONFIG-VALUE", f"fleet.{key}", "is required (letters, digits, - and _)")
        return None
    if not isinstance(value, str) or not TOKEN.match(value):
        check.error(
            "E-CONFIG-VALUE",
            f"fleet.{key}",
            f"must be 1-64 letters, digits, '-' or '_' (a NATS subject token), got {value!r}",
        )
        return None
    return value


def _host_token(hostname: str) -> str | None:
    """The machine's host name as a token (its first label), if it is one."""
    first = hostname.split(".", 1)[0]
    return first if TOKEN.match(first) else None


def _share(check: Checker, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        check.error("E-CONFIG-TYPE", "fleet.share", f"must be a list, any of {', '.join(SHARES)}")
        return frozenset({"blocks"})
    unknown = [v for v in value if v not in SHARES]
    if unknown:
        check.error(
            "E-CONFIG-VALUE",
            "fleet.share",
            f"unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(SHARES)}",
        )
    return frozenset(v for v in value if v in SHARES)


def _path(check: Checker, t: dict[str, Any], key: str) -> Path | None:
    value = t.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        check.error("E-CONFIG-TYPE", f"fleet.{key}", "must be an absolute file path")
        return None
    return Path(value)


def _text(check: Checker, t: dict[str, Any], key: str) -> str | None:
    value = t.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        check.error("E-CONFIG-TYPE", f"fleet.{key}", "must be a non-empty string")
        return None
    return value
