"""The control socket's budgets through the real transport with a fake gate: connections per
uid, the room kept for administrators, peers without a role refused at accept, authorisation
on the head before any body is read, body limits per route and role, the in-flight body
budget, strict heads, and the socket file never touched by path (issue 14: 1, 2, 3, 16, 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters import control_server
from aitherfwd.adapters.control_budget import Admission, ConnectionLimits, connection_cap
from aitherfwd.adapters.control_server import ControlServer, HttpRequest, HttpResponse, Peer
from aitherfwd.errors import RequestError
from lab.wait import until

pytestmark = pytest.mark.timeout(30)


class FakeGate:
    """Admits as `admin`, or not at all when `role` is None; `head` answers `limits`
    by path, refuses "/admin-only" with E-FORBIDDEN; remembers what it was asked."""

    def __init__(self) -> None:
        self.admin = False
        self.role: str | None = "read"
        self.limits = {"/bulk": 1 << 20}
        self.heads: list[str] = []
        self.seen: list[HttpRequest] = []

    def admit(self, peer: Peer) -> Admission | None:
        return None if self.role is None else Admission(admin=self.admin)

    def head(self, peer: Peer, method: str, path: str) -> int:
        self.heads.append(path)
        if path == "/admin-only" and not self.admin:
            raise RequestError("lacks the role 'admin'", code="E-FORBIDDEN")
        return self.limits.get(path, 1024)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.seen.append(request)
        return HttpResponse(200, {"path": request.path, "size": len(request.body)})


@contextlib.contextmanager
def serving(path: Path, **options: Any) -> Iterator[tuple[FakeGate, ControlServer]]:
    gate = FakeGate()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ControlServer(path, gate, gate=gate, **options)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield gate, server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def answer(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


GET = b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n"


def held(stack: contextlib.ExitStack, path: Path) -> socket.socket:
    """A kept-alive connection the server has certainly accepted and counted."""
    sock = stack.enter_context(connect(path))
    sock.sendall(GET)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    return sock


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


def test_one_uid_cannot_hold_more_than_its_connections(sock_path: Path) -> None:
    limits = ConnectionLimits(total=10, per_uid=2, admin_reserve=2, linger=4)
    with serving(sock_path, connections=limits), contextlib.ExitStack() as stack:
        for _ in range(2):
            held(stack, sock_path)
        with connect(sock_path) as third:
            third.sendall(GET)
            status, body = answer(read_all(third))
    assert status == 503
    assert body["error"]["code"] == "E-HTTP-BUSY"
    assert f"from uid {os.getuid()}" in body["error"]["message"]


def test_read_only_peers_cannot_fill_the_room_kept_for_administrators(sock_path: Path) -> None:
    limits = ConnectionLimits(total=4, per_uid=10, admin_reserve=2, linger=4)
    with serving(sock_path, connections=limits) as (gate, _), contextlib.ExitStack() as stack:
        for _ in range(2):
            held(stack, sock_path)
        with connect(sock_path) as refused:
            refused.sendall(GET)
            status, body = answer(read_all(refused))
        gate.admin = True
        for _ in range(2):  # the admin gets both kept places
            held(stack, sock_path)
        with connect(sock_path) as full:
            full.sendall(GET)
            assert answer(read_all(full))[0] == 503  # the total holds for admins too
    assert status == 503
    assert "kept for administrators" in body["error"]["message"]


def test_peer_without_a_role_is_refused_at_accept_before_any_read(sock_path: Path) -> None:
    with serving(sock_path) as (gate, server):
        gate.role = None
        sock = connect(sock_path)
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        status, body = answer(read_all(sock))
        sock.close()
        in_use = server.connections.users + server.connections.admins
    assert (status, body["error"]["code"]) == (403, "E-FORBIDDEN")
    assert gate.heads == [] and gate.seen == []
    assert in_use == 0


def test_refused_head_is_answered_before_the_body_is_sent(sock_path: Path) -> None:
    with serving(sock_path) as (gate, server), connect(sock_path) as sock:
        sock.sendall(b"POST /admin-only HTTP/1.1\r\nHost: a\r\nContent-Length: 33554432\r\n\r\n")
        status, body = answer(read_all(sock))  # no body was sent: the answer came anyway
        used = server.bodies.used
    assert (status, body["error"]["code"]) == (403, "E-FORBIDDEN")
    assert gate.seen == [] and used == 0


def test_body_limit_comes_from_the_gate_for_this_route(sock_path: Path) -> None:
    def post(sock_path: Path, path: str, size: int) -> int:
        with connect(sock_path) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n"
                "Connection: close\r\n\r\n".encode()
                + b" " * size
            )
            return answer(read_all(sock))[0]

    with serving(sock_path, max_body=1 << 30):
        assert post(sock_path, "/small", 1024) == 200
        assert post(sock_path, "/small", 1025) == 413
        assert post(sock_path, "/bulk", 100_000) == 200


def test_bodies_held_at_once_are_bounded_and_given_back(sock_path: Path) -> None:
    with serving(sock_path, body_budget=3000, body_admin_reserve=1000) as (gate, server):
        gate.limits["/big"] = 2000
        with connect(sock_path) as slow:
            slow.sendall(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1500\r\n\r\n")
            slow.sendall(b"x" * 1400)  # and then nothing, for now
            until(lambda: server.bodies.used == 1400, 5, "the slow body to be held")
            with connect(sock_path) as other:
                other.sendall(
                    b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 800\r\n\r\n" + b"y" * 800
                )
                status, body = answer(read_all(other))
            slow.sendall(b"x" * 100)
            assert answer(slow.recv(65536))[0] == 200
        until(lambda: server.bodies.used == 0, 5, "the budget to be given back")
    assert (status, body["error"]["code"]) == (503, "E-HTTP-BUSY")  # 2,000 for non-admins


def test_head_over_the_limit_is_431_even_when_it_arrives_in_one_read(sock_path: Path) -> None:
    big = b"GET /k HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 20_000 + b"\r\n\r\n"
    with serving(sock_path) as (gate, _), connect(sock_path) as sock:
        sock.sendall(big)
        status, body = answer(read_all(sock))
    assert (status, body["error"]["code"]) == (431, "E-HTTP-HEADERS-TOO-LARGE")
    assert gate.seen == []


def test_content_length_together_with_chunked_is_400(sock_path: Path) -> None:
    request = (
        b"POST /k HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    with serving(sock_path) as (gate, _), connect(sock_path) as sock:
        sock.sendall(request)
        status, body = answer(read_all(sock))
    assert (status, body["error"]["code"]) == (400, "E-HTTP-BAD-REQUEST")
    assert gate.seen == []


def test_socket_path_is_never_chmod_or_chown_by_name(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touched: list[str] = []
    real_chmod = os.chmod
    monkeypatch.setattr(
        control_server.os,
        "chmod",
        lambda p, mode, **kw: (touched.append(str(p)), real_chmod(p, mode, **kw))[1],
    )
    with serving(sock_path, mode=0o600):
        mode = os.stat(sock_path).st_mode & 0o777
        leftovers = [p.name for p in sock_path.parent.iterdir() if p != sock_path]
    assert mode == 0o600
    assert touched and str(sock_path) not in touched  # set on a private name, then renamed
    assert leftovers == []


def test_connection_total_is_lowered_to_fit_the_descriptor_limit() -> None:
    wanted = ConnectionLimits(total=256, per_uid=16, admin_reserve=32, linger=32)
    assert connection_cap(wanted, 65_536) == wanted
    small = connection_cap(wanted, 400)  # 400 - 256 reserved - 32 lingering
    assert (small.total, small.admin_reserve) == (112, 32)
    tiny = connection_cap(wanted, 300)
    assert tiny.total == 12 and tiny.admin_reserve == 6
