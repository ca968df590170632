"""The gateway's settings (layer L3, no heavy imports: the CLI reads it at start).

Owns: `GatewayConfig` — seed 003's `BIND_ADDR`, `POLICY_PATH`, `AUDIT_LOG_PATH`,
`SERVICE_TOKEN_PATH` with the seed's defaults, and ours, `AGENT_TOKENS_DIR` and
`AITHERFWD_SOCKET` — and parsing the listen address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aitherfwd.errors import AitherError

DEFAULT_BIND = "127.0.0.1:8475"
DEFAULT_POLICY = Path("/etc/secure-ai/policy/policy.yaml")
DEFAULT_AUDIT = Path("/var/lib/secure-ai/logs/tool-firewall-audit.jsonl")
DEFAULT_TOKEN = Path("/run/secure-ai/service-token")
DEFAULT_SOCKET = Path("/run/aitherfwd/control.sock")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    bind: str = DEFAULT_BIND
    policy: Path = DEFAULT_POLICY
    audit_log: Path | None = DEFAULT_AUDIT
    service_token: Path | None = DEFAULT_TOKEN
    agent_tokens_dir: Path | None = None
    aitherfwd_socket: Path = DEFAULT_SOCKET


def parse_bind(bind: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; raises AitherError(E-CONFIG-VALUE)."""
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AitherError(
            f"BIND_ADDR {bind!r} is not host:port (e.g. 127.0.0.1:8475)", code="E-CONFIG-VALUE"
        )
    return host, int(port)
