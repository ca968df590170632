"""Control-socket transport, server side (layer L2): the listening Unix socket.

Owns: the socket file (stale-socket removal; bound in a private directory, given its mode and
group there, then renamed into place, so no path is ever followed and nobody can connect
before the file is as asked; removal of our own file on close), the accept loop, and the
budgets at accept (adapters/control_budget.py): each new connection's peer credentials are
read first, a peer the gate gives no role is refused at once, one over its budget (per uid,
total, admin room) is refused with a 503; a refused connection gets its answer and is
drained briefly (at most `linger` at a time, beyond that it is just closed), so refusals
never hold more than a bounded number of descriptors. Then one HTTP session per connection
(adapters/control_http.py, which also defines the request and response types re-exported
here). accept() failing for lack of descriptors waits instead of failing the daemon.

Must not import anything of the firewall (policy, compiler, dynamic state, daemon): routing,
authorisation and handlers live in the daemon, which passes a `Handler` and a `Gate` in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

from aitherfwd.adapters.control_budget import (
    BodyBudget,
    ConnectionBudget,
    ConnectionLimits,
    Gate,
    OpenGate,
)
from aitherfwd.adapters.control_http import (
    _READ_CHUNK,
    Admitted,
    Handler,
    HttpRequest,
    HttpResponse,
    _Limits,
    _Session,
    error_body,
    refusal_bytes,
)
from aitherfwd.adapters.control_peer import Peer, read_peer
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
_LINGER_PER_UID = 2  # refused connections of one uid answered and drained at once
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY = 0.05  # seconds to wait for descriptors when accept() has none
_LOG_EVERY = 10.0  # seconds between two log lines about refused connections


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
    """Serves `handler` over HTTP/1.1 on the Unix socket at `path`.

    `gate` authorises peers at accept and requests on their head (default: everyone is an
    administrator, body limit `max_body`, or the larger one of a `bulk` (method, path,
    limit)); `connections` are the connection budgets; `body_budget` and
    `body_admin_reserve` bound the request bodies held at once (default: unbounded)."""

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
        gate: Gate | None = None,
        connections: ConnectionLimits | None = None,
        body_budget: int = 1 << 62,
        body_admin_reserve: int = 0,
    ) -> None:
        self._path = path
        self._handler = handler
        self._mode = mode
        self._group = group
        self._gate = gate or OpenGate(max_body, bulk)
        lim = connections or ConnectionLimits(max_connections, max_connections, 0, max_connections)
        self.connections = ConnectionBudget(lim)
        self.bodies = BodyBudget(body_budget, body_admin_reserve)
        self._limits = _Limits(idle_timeout, read_timeout)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._inode: tuple[int, int] | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._refusing: dict[asyncio.Task[None], int] = {}  # lingering refusal -> peer uid
        self.refused = 0  # connections refused since start
        self._refused_logged = (0.0, 0)  # (when, refused count) of the last log line

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) with its mode and group, start accepting."""
        if self._listener is not None:
            raise RuntimeError("control server already started")
        sock = self._bind()
        try:
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        self._listener = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())
        log.info("control socket listening path=%s mode=%o", self._path, self._mode)

    async def close(self) -> None:
        """Stop accepting, drop open connections (cancelling handlers), remove the socket."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        listener.close()
        sessions = [*self._sessions, *self._refusing]
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        self._unlink_own_socket()

    def _bind(self) -> socket.socket:
        """Bind in a fresh private directory next to the path, set mode and group there (no
        one else can reach, replace or link that file), then rename it into place: the path
        itself is never chmod-ed or chown-ed, so a link planted there is replaced, not
        followed, and the socket is never reachable with a looser mode or group."""
        self._remove_stale()
        try:
            private = Path(tempfile.mkdtemp(prefix=".control-", dir=self._path.parent))
        except OSError as exc:
            raise ControlSocketError(f"cannot bind control socket {self._path}: {exc}") from exc
        staged = private / "s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(staged))
            os.chmod(staged, self._mode)
            if self._group is not None:
                os.chown(staged, -1, self._group)
            info = os.stat(staged)
            os.rename(staged, self._path)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"cannot bind control socket {self._path}: {exc}") from exc
        finally:
            staged.unlink(missing_ok=True)
            private.rmdir()
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

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:  # ECONNABORTED and the like: next one
                    log.debug("control accept failed error=%s", exc)
                    continue
                # Leave the rest in the kernel's backlog until descriptors come back; never
                # let the daemon's own work (libnftables) run out of them.
                self._note_refused(f"accept failed: {exc.strerror}")
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        """Peer credentials, the gate, the budget — before reading anything."""
        try:
            peer = read_peer(conn)
        except OSError:
            conn.close()
            return
        admission = self._gate.admit(peer)
        if admission is None:
            message = f"uid {peer.uid} has no role on this control socket"
            self._refuse(conn, peer.uid, refusal_bytes("E-FORBIDDEN", message))
            return
        reason = self.connections.take(peer.uid, admin=admission.admin)
        if reason is not None:
            self._note_refused(reason)
            self._refuse(conn, peer.uid, refusal_bytes("E-HTTP-BUSY", reason))
            return
        who = Admitted(peer, admission, self._gate, self.bodies)
        task = asyncio.get_running_loop().create_task(self._serve(conn, who))
        self._sessions.add(task)

    async def _serve(self, conn: socket.socket, who: Admitted) -> None:
        # Only close() (or loop shutdown) cancels a connection task: end it quietly.
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
            await _Session(reader, writer, self._handler, self._limits, who).run()
        except (OSError, TimeoutError) as exc:  # peer vanished, or does not read our answers
            log.debug("control connection dropped reason=%s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._sessions.discard(task)
            self.connections.give(who.peer.uid, admin=who.admission.admin)
            if writer is None:
                conn.close()
            else:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._close_writer(writer)

    def _refuse(self, conn: socket.socket, uid: int, answer: bytes) -> None:
        """Answer and close without reading the request. Closing a Unix socket with unread
        input can reset the peer before it reads our answer, so while few refusals linger
        (`linger` in all, two per uid) shut our side and discard the peer's input for up to
        a second; beyond that, send what the socket takes and hang up."""
        lingering = self._refusing.values()
        if (
            len(self._refusing) >= self.connections.limits.linger
            or sum(1 for u in lingering if u == uid) >= _LINGER_PER_UID
        ):
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(answer)
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._linger(conn, answer))
        self._refusing[task] = uid

    async def _linger(self, conn: socket.socket, answer: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            async with asyncio.timeout(_LINGER_SECONDS):
                await loop.sock_sendall(conn, answer)
                conn.shutdown(socket.SHUT_WR)
                while await loop.sock_recv(conn, _READ_CHUNK):
                    pass
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._refusing.pop(task, None)
            conn.close()

    def _note_refused(self, reason: str) -> None:
        """Count a refused connection; log at most one line per `_LOG_EVERY` seconds."""
        self.refused += 1
        now = time.monotonic()
        when, count = self._refused_logged
        if now - when >= _LOG_EVERY:
            log.warning(
                "control connections refused count=%d reason=%s", self.refused - count, reason
            )
            self._refused_logged = (now, self.refused)

    async def _close_writer(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self._limits.read_timeout)
        except (OSError, TimeoutError):
            writer.transport.abort()
