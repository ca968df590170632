"""Strict schemas for sandbox-grant requests (layer L1, pure).

Owns: `POST /v1/sandbox` bodies — `{"destination": address, CIDR or host name, "ttl": "1h",
"scope": "sandbox-alice", "ports": [443]}` — turned into a typed `GrantSpec`, and the
destination in `DELETE /v1/sandbox/{destination}`. Errors are `ApiError`s with a 4xx status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aitherfwd.control.schema import bad, parse_network
from aitherfwd.durations import parse_duration
from aitherfwd.policy.egress import host_name
from aitherfwd.policy.model import IPNetwork

GRANT_FIELDS = {"destination", "ttl", "scope", "ports"}
MAX_PORTS = 16
SCOPE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


@dataclass(frozen=True, slots=True)
class GrantSpec:
    network: IPNetwork | None
    host: str | None
    ttl: int | None  # None: the policy's default_ttl
    scope: str
    ports: tuple[int, ...]


def destination(value: Any, what: str = "destination") -> tuple[IPNetwork | None, str | None]:
    if not isinstance(value, str) or not value or len(value) > 253:
        raise bad("E-SCHEMA", f"{what} must be an address, a CIDR or a host name")
    if set(value) <= set("0123456789./") or ":" in value:
        return parse_network(value, what), None
    name = host_name(value)
    if name is None:
        raise bad("E-SCHEMA", f"{what}: '{value[:64]}' is not an address, a CIDR or a host name")
    return None, name


def parse_grant(body: Any) -> GrantSpec:
    if not isinstance(body, dict):
        raise bad("E-SCHEMA", "body must be a JSON object")
    unknown = sorted(set(body) - GRANT_FIELDS)
    if unknown:
        raise bad(
            "E-SCHEMA",
            f"body: unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(GRANT_FIELDS))}",
        )
    if "destination" not in body:
        raise bad("E-SCHEMA", "body: missing field destination")
    net, host = destination(body["destination"])
    ttl = body.get("ttl")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, str | int):
            raise bad("E-TTL", 'ttl must be a duration such as "1h" or seconds')
        try:
            ttl = parse_duration(ttl)
        except ValueError as exc:
            raise bad("E-TTL", f"ttl: {exc}") from None
    scope = body.get("scope", "sandbox")
    if not isinstance(scope, str) or not 1 <= len(scope) <= 64 or set(scope) - SCOPE_CHARS:
        raise bad("E-SCHEMA", "scope must be 1-64 letters, digits or _.:@- (e.g. sandbox-alice)")
    ports = body.get("ports", [])
    if not isinstance(ports, list) or len(ports) > MAX_PORTS:
        raise bad("E-SCHEMA", f"ports must be a list of at most {MAX_PORTS} port numbers")
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise bad("E-SCHEMA", "ports must be integers 1-65535")
    return GrantSpec(net, host, ttl, scope, tuple(sorted(set(ports))))
