"""The destination an allowed tool call may reach (layer L1, pure).

Owns: reading the host and port out of the parameter a tool entry's `network.param`
names — a URL (`https://api.example.com:8443/x`: scheme's default port when none) or a
bare `host`, `host:port`, `[v6]:port` — and checking them: a valid IP or DNS name, a port
among `network.ports` when the entry lists ports. The grant itself is asked of the daemon
by `gateway.service`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from aitherfwd.gateway.model import NetworkSpec

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Destination:
    host: str  # an IP address or a lower-case DNS name
    port: int
    ttl: int


def _host_ok(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)


def _split(name: str, text: str) -> tuple[str, int | None, str] | str:
    """(host, port or None, scheme) of a URL or host[:port], or why it is none."""
    if any(not ch.isprintable() or ch in "\\ " for ch in text):
        return f'network parameter "{name}" holds whitespace, backslashes or controls'
    try:
        parts = urllib.parse.urlsplit(text if "://" in text else f"//{text}")
        if "@" in parts.netloc:
            return f'network parameter "{name}" carries credentials; not granted'
        return (parts.hostname or "").lower(), parts.port, parts.scheme.lower()
    except ValueError:
        return f'network parameter "{name}" is not a URL or host'


def destination(spec: NetworkSpec, params: dict[str, object]) -> Destination | str:
    """Where the call goes, or why it may not go anywhere."""
    value = params.get(spec.param)
    if not isinstance(value, str) or not value.strip():
        return f'network parameter "{spec.param}" is missing or not a string'
    split = _split(spec.param, value.strip())
    if isinstance(split, str):
        return split
    host, port, scheme = split
    if port is None:
        port = _DEFAULT_PORTS.get(scheme) or (spec.ports[0] if len(spec.ports) == 1 else None)
    if not host or not _host_ok(host):
        return f'network parameter "{spec.param}" names no valid host'
    if port is None:
        return f'network parameter "{spec.param}" names no port'
    if spec.ports and port not in spec.ports:
        return f"port {port} is not among the tool's network ports"
    return Destination(host, port, spec.ttl)
