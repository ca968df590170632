"""Control-socket transport, server side (layer L2): the listening Unix socket.

Owns: the socket file (stale-socket removal, mode, group, removal of our own file on close),
accepting connections under a cap (a refused one gets a 503 and is drained briefly), and one
HTTP session per connection (adapters/control_http.py, which also defines the request and
response types re-exported here).

Must not import anything of the firewall (policy, compiler, dynamic state, daemon): routing,
authorisation and handlers live in the daemon, which passes one `Handler` in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from aitherfwd.adapters.control_http import (
    _READ_CHUNK,
    Handler,
    HttpRequest,
    HttpResponse,
    Peer,
    _Limits,
    _Session,
    busy_bytes,
    error_body,
    read_peer,
)
from aitherfwd.errors import AitherError

__all__ = [
    "ControlServer",
    "ControlSocketError",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "Peer",
    "error_body",
    "read_peer",
]

log = logging.getLogger(__name__)
_LINGER_SECONDS = 1.0  # how long a refused connection may take to send its request


class ControlSocketError(AitherError):
    """The control socket cannot be created (path in use, not a socket, no permission)."""

    code = "E-CONTROL-SOCKET"


def _is_listening(path: Path) -> bool:
    """Whether some process accepts connections on the socket file at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        return probe.connect_ex(str(path)) in (0, errno.EAGAIN, errno.EINPROGRESS)
    finally:
        probe.close()


class ControlServer:
    """Serves `handler` over HTTP/1.1 on the Unix socket at `path`."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        mode: int = 0o660,
        group: int | None = None,
        max_body: int = 1 << 20,
        max_connections: int = 512,
        idle_timeout: float = 30.0,
        read_timeout: float = 10.0,
        bulk: tuple[tuple[str, str, int], ...] = (),
    ) -> None:
        """`bulk`: (method, path, limit) for the few endpoints that take large bodies."""
        self._path = path
        self._handler = handler
        self._mode = mode
        self._group = group
        self._max_connections = max_connections
        self._limits = _Limits(max_body, idle_timeout, read_timeout, bulk)
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._refusing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), set its mode and group, start accepting."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        sock = self._bind()
        try:
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("control socket listening path=%s mode=%o", self._path, self._mode)

    async def close(self) -> None:
        """Stop accepting, drop open connections (cancelling handlers), remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        sessions = [*self._sessions, *self._refusing]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await server.wait_closed()
        self._unlink_own_socket()

    def _bind(self) -> socket.socket:
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self._path))
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot bind control socket {self._path}: {exc}") from exc
        try:
            # Nobody can connect before listen(), which asyncio calls later, so the file never
            # has a looser mode or group than asked for while it accepts connections.
            os.chmod(self._path, self._mode)
            if self._group is not None:
                os.chown(self._path, -1, self._group)
            info = os.stat(self._path)
        except OSError as exc:
            sock.close()
            self._path.unlink(missing_ok=True)
            raise ControlSocketError(f"cannot set up control socket {self._path}: {exc}") from exc
        self._inode = (info.st_dev, info.st_ino)
        return sock

    def _remove_stale(self) -> None:
        try:
            info = os.lstat(self._path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ControlSocketError(f"cannot inspect {self._path}: {exc}") from exc
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlSocketError(f"{self._path} exists and is not a socket; not replacing it")
        if _is_listening(self._path):
            raise ControlSocketError(
                f"another process serves {self._path}; is aitherfwd already running?"
            )
        log.info("removing stale control socket path=%s", self._path)
        self._path.unlink(missing_ok=True)

    def _unlink_own_socket(self) -> None:
        """Remove the socket file unless something else has replaced it meanwhile."""
        with contextlib.suppress(OSError):
            info = os.lstat(self._path)
            if (info.st_dev, info.st_ino) == self._inode:
                self._path.unlink()
        self._inode = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Only close() (or loop shutdown) cancels a connection task, and Python 3.11's stream
        # callback would log that as an unhandled error: end it quietly instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._server is None or task is None:
            writer.transport.abort()
            return
        if len(self._sessions) >= self._max_connections:
            await self._refuse(task, reader, writer)
            return
        self._sessions.add(task)
        try:
            peer = read_peer(writer.get_extra_info("socket"))
            await _Session(reader, writer, self._handler, self._limits, peer).run()
        except (OSError, TimeoutError) as exc:  # peer vanished, or does not read our answers
            log.debug("control connection dropped reason=%s", exc)
        except Exception:
            log.exception("control connection failed")
        finally:
            self._sessions.discard(task)
            await self._close_writer(writer)

    async def _refuse(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer 503 and close. Closing a Unix socket with unread input resets the peer before
        it reads our answer, so shut our side, then discard its request for up to a second;
        at most `max_connections` refusals linger like this, beyond that we just hang up."""
        if not self._refusing:
            log.warning("control connections refused reason=limit limit=%d", self._max_connections)
        if len(self._refusing) >= self._max_connections:
            writer.transport.abort()
            return
        self._refusing.add(task)
        try:
            limit = self._max_connections
            writer.write(busy_bytes(f"too many connections (limit {limit})"))
            writer.write_eof()
            async with asyncio.timeout(_LINGER_SECONDS):
                while await reader.read(_READ_CHUNK):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            self._refusing.discard(task)
            writer.transport.abort()

    async def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self._limits.read_timeout)
        except (OSError, TimeoutError):
            writer.transport.abort()
