"""The control-socket transport over real Unix sockets: HTTP framing, limits, peer credentials.

The server runs on an event loop in a background thread (no pytest-asyncio); clients are
blocking sockets, `http.client` and `ControlClient`, as the CLI and curl would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.control_client import ControlClient, ControlUnavailable, UnixHTTPConnection
from aitherfwd.adapters.control_server import (
    ControlServer,
    ControlSocketError,
    HttpRequest,
    HttpResponse,
)

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """An echo handler that remembers every request it was given."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self._lock = threading.Lock()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        with self._lock:
            self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/nan":
            return HttpResponse(200, {"value": float("nan")})
        peer = request.peer
        return HttpResponse(
            200,
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "content_type": request.headers.get("content-type"),
                "body": json.loads(request.body) if request.body else None,
                "peer": {"pid": peer.pid, "uid": peer.uid, "gid": peer.gid},
            },
        )


@contextlib.contextmanager
def serving(path: Path, **options: Any) -> Iterator[Recorder]:
    """Run a ControlServer on its own event loop thread for the duration of the block."""
    recorder = Recorder()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ControlServer(path, recorder, **options)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield recorder
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
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(path: Path, data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with connect(path) as sock:
        sock.sendall(data)
        return read_all(sock)


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", len(body)))
    return int(status_line.split()[1]), headers, json.loads(body[:length])


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


def test_echo_handler_sees_method_decoded_path_query_and_json_body(sock_path: Path) -> None:
    with serving(sock_path):
        status, answer = ControlClient(sock_path).request(
            "POST", "/v1/a%20b?x=1&empty=", {"k": "v"}
        )
    assert status == 200
    assert answer["method"] == "POST"
    assert answer["path"] == "/v1/a b"
    assert answer["query"] == {"x": "1", "empty": ""}
    assert answer["content_type"] == "application/json"
    assert answer["body"] == {"k": "v"}


def test_response_is_compact_json_with_type_and_length(sock_path: Path) -> None:
    with serving(sock_path):
        raw = exchange(sock_path, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    status, headers, answer = parse(raw)
    body = raw.partition(b"\r\n\r\n")[2]
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert body == json.dumps(answer, separators=(",", ":")).encode()


def test_three_requests_share_one_keep_alive_connection(sock_path: Path) -> None:
    with serving(sock_path) as recorder:
        conn = UnixHTTPConnection(sock_path, timeout=5)
        try:
            conn.connect()
            first = conn.sock
            conn.auto_open = 0  # a reconnect would raise NotConnected instead
            for i in range(3):
                conn.request("POST", f"/n/{i}", body=json.dumps({"i": i}))
                response = conn.getresponse()
                assert response.status == 200
                assert json.loads(response.read())["body"] == {"i": i}
                assert conn.sock is first
        finally:
            conn.close()
    assert [r.path for r in recorder.requests] == ["/n/0", "/n/1", "/n/2"]


def test_peer_credentials_are_those_of_the_connecting_process(sock_path: Path) -> None:
    with serving(sock_path) as recorder:
        status, _ = ControlClient(sock_path).request("GET", "/who")
    assert status == 200
    peer = recorder.requests[0].peer
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert sorted(peer.groups) == sorted(os.getgroups())


def test_declared_body_over_limit_gets_413_without_sending_it(sock_path: Path) -> None:
    with serving(sock_path, max_body=1024) as recorder:
        raw = exchange(
            sock_path, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n"
        )
    status, headers, answer = parse(raw)
    assert status == 413
    assert headers["connection"] == "close"
    assert answer["error"]["code"] == "E-HTTP-BODY-TOO-LARGE"
    assert recorder.requests == []


def test_client_sending_huge_body_gets_413_not_a_broken_pipe(sock_path: Path) -> None:
    with serving(sock_path, max_body=1024):
        status, answer = ControlClient(sock_path).request("POST", "/big", {"x": "y" * 4_000_000})
    assert status == 413
    assert answer["error"]["code"] == "E-HTTP-BODY-TOO-LARGE"


def test_chunked_body_is_accepted_up_to_the_limit(sock_path: Path) -> None:
    head = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with serving(sock_path, max_body=1024):
        small = exchange(sock_path, head + b'7\r\n{"a":1}\r\n0\r\n\r\n')
        large = exchange(sock_path, head + (b"100\r\n" + b" " * 256 + b"\r\n") * 5 + b"0\r\n\r\n")
    assert parse(small)[0] == 200
    assert parse(small)[2]["body"] == {"a": 1}
    assert parse(large)[0] == 413


def test_garbage_gets_400_json_error_and_server_survives(sock_path: Path) -> None:
    with serving(sock_path):
        raw = exchange(sock_path, b"GARBAGE\r\n\r\n")
        status, answer = ControlClient(sock_path).request("GET", "/after")
    code, _, error = parse(raw)
    assert code == 400
    assert error["error"]["code"] == "E-HTTP-BAD-REQUEST"
    assert error["error"]["message"]
    assert (status, answer["path"]) == (200, "/after")


def test_truncated_body_then_close_leaves_server_serving(sock_path: Path) -> None:
    with serving(sock_path) as recorder:
        with connect(sock_path) as sock:
            sock.sendall(b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        status, answer = ControlClient(sock_path).request("GET", "/after")
    assert (status, answer["path"]) == (200, "/after")
    assert [r.path for r in recorder.requests] == ["/after"]


def test_handler_exception_becomes_500_and_server_survives(sock_path: Path) -> None:
    client = ControlClient(sock_path)
    with serving(sock_path):
        boom = client.request("GET", "/boom")
        nan = client.request("GET", "/nan")
        after = client.request("GET", "/after")
    assert boom[0] == 500
    assert boom[1]["error"]["code"] == "E-INTERNAL"
    assert nan[0] == 500  # NaN is not JSON: a handler bug, not a malformed answer
    assert after[0] == 200


@pytest.mark.kernel  # chown to another group needs CAP_CHOWN (CI runs as root)
def test_socket_file_is_mode_0660_with_requested_group_and_removed_on_close(
    sock_path: Path,
) -> None:
    with serving(sock_path, group=65534):
        info = os.stat(sock_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == 65534
    assert not sock_path.exists()


def test_stale_socket_is_replaced_but_live_socket_and_regular_file_are_not(
    sock_path: Path,
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # leaves the file behind, nothing listening: a crashed daemon
    with serving(sock_path):
        assert ControlClient(sock_path).request("GET", "/x")[0] == 200
        with pytest.raises(ControlSocketError, match="already running"), serving(sock_path):
            pass
    sock_path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"), serving(sock_path):
        pass
    assert sock_path.read_text() == "not a socket"


def test_slow_request_gets_408_and_is_closed(sock_path: Path) -> None:
    with serving(sock_path, read_timeout=0.3), connect(sock_path) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")  # never finishes its headers
        raw = read_all(sock)
    status, _, answer = parse(raw)
    assert status == 408
    assert answer["error"]["code"] == "E-HTTP-TIMEOUT"


def test_idle_keep_alive_connection_is_closed_silently(sock_path: Path) -> None:
    with serving(sock_path, idle_timeout=0.2), connect(sock_path) as sock:
        assert read_all(sock) == b""


def test_connections_beyond_the_cap_get_503(sock_path: Path) -> None:
    request = b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n"
    with serving(sock_path, max_connections=2), contextlib.ExitStack() as stack:
        for _ in range(2):  # two kept-alive connections the server has certainly accepted
            held = stack.enter_context(connect(sock_path))
            held.sendall(request)
            assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
        status, headers, answer = parse(exchange(sock_path, request))
    assert status == 503
    assert headers["connection"] == "close"
    assert answer["error"]["code"] == "E-HTTP-BUSY"


def test_expect_100_continue_gets_interim_response(sock_path: Path) -> None:
    with serving(sock_path), connect(sock_path) as sock:
        sock.sendall(
            b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b'{"a":1}')
        status, _, answer = parse(read_all(sock))
    assert (status, answer["body"]) == (200, {"a": 1})


def test_repeated_query_parameter_is_400(sock_path: Path) -> None:
    with serving(sock_path) as recorder:
        status, answer = ControlClient(sock_path).request("GET", "/q?a=1&a=2")
    assert status == 400
    assert answer["error"]["code"] == "E-HTTP-BAD-REQUEST"
    assert recorder.requests == []


def test_thousand_concurrent_requests_from_twenty_threads(sock_path: Path) -> None:
    client = ControlClient(sock_path)

    def one(i: int) -> tuple[int, Any]:
        return client.request("POST", f"/n/{i}", {"i": i})

    with serving(sock_path), ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, range(1000)))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert (answer["path"], answer["body"]) == (f"/n/{i}", {"i": i})


def test_client_against_missing_socket_raises_control_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    with pytest.raises(ControlUnavailable) as caught:
        ControlClient(missing).request("GET", "/v1/status")
    assert caught.value.code == "E-DAEMON-UNAVAILABLE"
    assert caught.value.message == f"aitherfwd daemon is not running (no socket at {missing})"


def test_client_against_stale_socket_raises_control_unavailable(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sock_path))  # bound, never listening
        with pytest.raises(ControlUnavailable, match="nothing listens"):
            ControlClient(sock_path).request("GET", "/v1/status")


CHILD = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.buffer.write(data)
"""


@pytest.mark.kernel  # switching to uid nobody needs root (CI runs as root)
def test_request_from_another_uid_is_seen_with_that_uid() -> None:
    # pytest's tmp_path is private to root, so the socket lives in a directory nobody can
    # traverse; mode 0666 lets nobody connect (the daemon's default 0660 would not).
    directory = Path(tempfile.mkdtemp(prefix="aitherfwd-test-", dir="/tmp"))
    directory.chmod(0o711)
    path = directory / "control.sock"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    try:
        with serving(path, mode=0o666) as recorder:
            done = subprocess.run(
                [*command, python, "-I", "-S", "-c", CHILD, str(path)],
                capture_output=True,
                timeout=10,
                check=True,
            )
    finally:
        shutil.rmtree(directory)
    status, _, answer = parse(done.stdout)
    assert status == 200
    assert answer["peer"]["uid"] == 65534
    peer = recorder.requests[0].peer
    assert (peer.uid, peer.gid, peer.groups) == (65534, 65534, ())
    assert peer.pid != os.getpid()
