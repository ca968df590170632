"""Control-socket transport, client side (layer L2): the CLI's HTTP/1.1 + JSON client.

Owns: connecting to the daemon's Unix socket with the standard library's `http.client`, JSON
encoding of request bodies and decoding of answers, and turning connection failures into
`ControlUnavailable` with a one-line reason.
Must not import h11, asyncio or anything of the firewall: it knows paths and JSON, not what
they mean. Imports only `aitherfwd.errors` from the package.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from aitherfwd.errors import AitherError, ExitCode


class ControlUnavailable(AitherError):
    """The daemon cannot be reached: not running, no access to its socket, or no answer."""

    code = "E-DAEMON-UNAVAILABLE"
    exit_code = ExitCode.FAILURE


class ControlProtocolError(AitherError):
    """Something answered on the control socket, but not with JSON."""

    code = "E-DAEMON-PROTOCOL"
    exit_code = ExitCode.FAILURE


class UnixHTTPConnection(http.client.HTTPConnection):
    """`http.client.HTTPConnection` that connects to a Unix socket instead of TCP."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Sends one JSON request per connection; safe to share between threads."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        """Send `body` as JSON to `path`; the status and the decoded JSON answer (None if
        empty). Raises ControlUnavailable when the daemon cannot be reached."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request(method, path, body=payload, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # The daemon may have answered early (413 for a large body) and hung up while
                # we were still sending: read that answer, and only if there is none, fail.
                if conn.sock is None:
                    raise self._unavailable(exc) from exc
            response = conn.getresponse()
            status, data = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable(exc) from exc
        finally:
            conn.close()
        return status, self._decode(status, data)

    def _unavailable(self, exc: BaseException) -> ControlUnavailable:
        where = self.socket_path
        if isinstance(exc, FileNotFoundError):
            reason = f"aitherfwd daemon is not running (no socket at {where})"
        elif isinstance(exc, ConnectionRefusedError):
            reason = f"aitherfwd daemon is not running (nothing listens on {where})"
        elif isinstance(exc, PermissionError):
            reason = (
                f"you lack access to the aitherfwd control socket {where} "
                "(run as root or as a member of its group)"
            )
        elif isinstance(exc, TimeoutError):
            reason = f"aitherfwd daemon did not answer within {self.timeout:g} s (socket {where})"
        elif isinstance(exc, http.client.RemoteDisconnected):
            reason = f"aitherfwd daemon closed the connection without answering (socket {where})"
        else:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reason = f"cannot talk to the aitherfwd daemon at {where}: {detail}"
        return ControlUnavailable(reason)

    @staticmethod
    def _decode(status: int, data: bytes) -> Any:
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ControlProtocolError(
                f"the control socket answered HTTP {status} with a body that is not JSON"
            ) from exc
