"""Sandbox grants from the aitherfwd daemon for allowed tool calls (layer L2).

Owns: `DaemonGrants`, the real `Grants` port: `POST /v1/sandbox` on the daemon's control
socket (role `sandbox`) with the call's host, port and ttl, the agent's name as the scope.
The daemon answers after the grant is in the kernel (and refuses known_bad, cloud
metadata, ports outside sandbox.allowed_ports: the call is then denied). The standard
library client blocks, so it runs in a worker thread; an unreachable daemon is a refusal
(fail closed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aitherfwd.client import SandboxClient, SandboxError
from aitherfwd.errors import AitherError
from aitherfwd.gateway.network import Destination
from aitherfwd.gateway.service import GrantRefused

DEFAULT_SOCKET = Path("/run/aitherfwd/control.sock")


class DaemonGrants:
    def __init__(self, socket_path: Path = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _grant(self, dest: Destination, scope: str) -> None:
        client = SandboxClient(self.socket_path, self.timeout)
        try:
            client.grant(dest.host, ttl=dest.ttl, scope=scope, ports=[dest.port])
        except SandboxError as exc:
            raise GrantRefused(f"{exc.code}: {exc.message}") from exc
        except AitherError as exc:
            raise GrantRefused(f"{exc.code}: {exc.message}") from exc
        except OSError as exc:
            raise GrantRefused(f"the daemon cannot be reached ({exc})") from exc

    async def grant(self, dest: Destination, scope: str) -> None:
        await asyncio.to_thread(self._grant, dest, scope)
