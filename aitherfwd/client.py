"""A tiny client for proxies and agents (layer L3, standard library only).

Owns: `SandboxClient` — sandbox grants, revocations and outbound verdicts through the
daemon's control socket — and `scope_from_headers`, the `X-Agent-Scope` convention of a
sandboxing proxy (docs/egress.md). Example:

    from aitherfwd.client import SandboxClient, scope_from_headers
    client = SandboxClient()                       # /run/aitherfwd/control.sock
    scope = scope_from_headers(request.headers)    # "sandbox-alice" or None
    if scope is not None:
        client.grant("api.example.com", ttl="1h", scope=scope, ports=[443])

The calling user needs the `sandbox` role (or `admin`) in the daemon's config.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.errors import AitherError

DEFAULT_SOCKET = Path("/run/aitherfwd/control.sock")
SCOPE_HEADER = "X-Agent-Scope"
SCOPE_RE = re.compile(r"^sandbox-[A-Za-z0-9_.@:-]{1,56}$")


class SandboxError(AitherError):
    """The daemon refused: `code` and `message` as the daemon answered them, and the HTTP
    `status` it answered with (403 refused, 400 bad request, …; what a proxy may pass on)."""

    def __init__(self, message: str, *, code: str = "E-HTTP", status: int = 0) -> None:
        super().__init__(message, code=code, status=status)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def scope_from_headers(headers: Mapping[str, str]) -> str | None:
    """The sandbox scope an agent's request carries (`X-Agent-Scope: sandbox-<who>`), or
    None when it carries none or a malformed one (treat both as "no sandbox access")."""
    for key, value in headers.items():
        if key.lower() == SCOPE_HEADER.lower():
            scope = value.strip()
            return scope if SCOPE_RE.match(scope) else None
    return None


class SandboxClient:
    def __init__(self, socket_path: Path | str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self._client = ControlClient(Path(socket_path), timeout)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self._client.request(method, path, body)
        if status >= 400:
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            code = str(err.get("code", "E-HTTP"))
            raise SandboxError(str(err.get("message", "")), code=code, status=status)
        return answer

    def grant(
        self,
        destination: str,
        *,
        ttl: str | int | None = None,
        scope: str = "sandbox",
        ports: Iterable[int] = (),
    ) -> dict[str, Any]:
        """Open `destination` (address, CIDR or host name) for `ttl` (default: the policy's
        default_ttl; never beyond its max_ttl). Raises SandboxError when refused."""
        body: dict[str, Any] = {"destination": destination, "scope": scope}
        if ttl is not None:
            body["ttl"] = ttl
        if ports:
            body["ports"] = list(ports)
        answer: dict[str, Any] = self._call("POST", "/v1/sandbox", body)
        return answer

    def revoke(self, destination: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(destination, safe="")
        answer: dict[str, Any] = self._call("DELETE", f"/v1/sandbox/{quoted}")
        return answer

    def grants(self) -> list[dict[str, Any]]:
        answer = self._call("GET", "/v1/sandbox")
        return list(answer["grants"])

    def evaluate(self, destination: str, port: int, protocol: str = "tcp") -> dict[str, Any]:
        """Would the host reach `destination` (address or host name) on `port` now?"""
        field = (
            "dest_host"
            if re.search(r"[A-Za-z]", destination) and ":" not in destination
            else "dest_ip"
        )
        body = {
            "direction": "outbound",
            field: destination,
            "dest_port": port,
            "protocol": protocol,
        }
        answer: dict[str, Any] = self._call("POST", "/v1/evaluate", body)
        return answer
