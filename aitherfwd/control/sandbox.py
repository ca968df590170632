"""Strict schemas for sandbox-grant requests (layer L1, pure).

Owns: `POST /v1/sandbox` bodies — `{"destination": address, CIDR or host name, "ttl": "1h",
"scope": "sandbox-alice", "ports": [443]}` — turned into a typed `GrantSpec`, and the
destination in `DELETE /v1/sandbox/{destination}`. Errors are coded `RequestError`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aitherfwd.control.schema import parse_network, parse_ttl
from aitherfwd.errors import RequestError
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
        raise RequestError(f"{what} must be an address, a CIDR or a host name", code="E-SCHEMA")
    if set(value) <= set("0123456789./") or ":" in value:
        return parse_network(value, what), None
    name = host_name(value)
    if name is None:
        raise RequestError(
            f"{what}: '{value[:64]}' is not an address, a CIDR or a host name", code="E-SCHEMA"
        )
    return None, name


def parse_grant(body: Any) -> GrantSpec:
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object", code="E-SCHEMA")
    unknown = sorted(set(body) - GRANT_FIELDS)
    if unknown:
        raise RequestError(
            f"body: unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(GRANT_FIELDS))}",
            code="E-SCHEMA",
        )
    if "destination" not in body:
        raise RequestError("body: missing field destination", code="E-SCHEMA")
    net, host = destination(body["destination"])
    ttl = body.get("ttl")
    if ttl is not None:
        ttl = parse_ttl(ttl, "ttl", "1h")
    scope = body.get("scope", "sandbox")
    if not isinstance(scope, str) or not 1 <= len(scope) <= 64 or set(scope) - SCOPE_CHARS:
        raise RequestError(
            "scope must be 1-64 letters, digits or _.:@- (e.g. sandbox-alice)", code="E-SCHEMA"
        )
    ports = body.get("ports", [])
    if not isinstance(ports, list) or len(ports) > MAX_PORTS:
        raise RequestError(
            f"ports must be a list of at most {MAX_PORTS} port numbers", code="E-SCHEMA"
        )
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise RequestError("ports must be integers 1-65535", code="E-SCHEMA")
    return GrantSpec(net, host, ttl, scope, tuple(sorted(set(ports))))
