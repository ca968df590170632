"""Control-socket transport, HTTP side (layer L2): one connection's HTTP/1.1 + JSON session.

Owns: the request and response types the daemon's handler sees (`HttpRequest`,
`HttpResponse`, `Handler`; `Peer` is adapters/control_peer.py's), HTTP framing with h11
(keep-alive, Content-Length and chunked request bodies, read and idle timeouts, a head of at
most 16 KiB in all, Content-Length with Transfer-Encoding refused), asking the gate about
each request head before reading its body (the answer is the body limit), taking body bytes
from the shared in-flight budget and giving them back once answered, and the JSON encoding
of responses. Every transport failure, and any exception a handler raises, becomes a JSON
error response `{"error": {"code": ..., "message": ...}}`. The listening socket, the accept
loop and the connection budgets are adapters/control_server.py's.

The only importer of h11 on the server side. Must not import anything of the firewall; imports
only `aitherfwd.errors`, `aitherfwd.codes` and the other control-socket adapters.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from aitherfwd import codes
from aitherfwd.adapters.control_budget import Admission, BodyBudget, Gate
from aitherfwd.adapters.control_peer import Peer
from aitherfwd.adapters.control_stream import send_stream
from aitherfwd.errors import AitherError

log = logging.getLogger(__name__)

_MAX_HEAD_BYTES = 16 * 1024  # request line plus headers; more is a 431
_READ_CHUNK = 64 * 1024
_MAX_QUERY_FIELDS = 100
_NO_BODY_STATUSES = frozenset({204, 304})
# h11 suggests a status for what it cannot parse; its code (the status comes back from codes)
_H11_CODES = {
    400: "E-HTTP-BAD-REQUEST",
    405: "E-METHOD",
    408: "E-HTTP-TIMEOUT",
    413: "E-HTTP-BODY-TOO-LARGE",
    431: "E-HTTP-HEADERS-TOO-LARGE",
    501: "E-HTTP-NOT-IMPLEMENTED",
    503: "E-HTTP-BUSY",
}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: `path` is percent-decoded and has no query; header names are lower-case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: Peer
    # set by the handler's owner for budgeted peers: called with what the request will cost
    # (e.g. its number of threat events) before the work starts; raises to refuse it
    charge: Callable[[float], None] | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a handler returns; `body` must be JSON-serialisable and is sent as JSON. With a
    `stream`, `body` is ignored: its chunks (newline-delimited JSON) are sent as they come,
    chunked, each within the read timeout, and the connection closes when it ends or the
    peer hangs up (control_stream.py)."""

    status: int
    body: object
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _HttpError(AitherError):
    """A request the transport answers itself with an error and then closes the connection."""

    code = "E-HTTP-BAD-REQUEST"


def _code_for(status: int) -> str:
    return _H11_CODES.get(status, "E-HTTP-BAD-REQUEST")


class _Idle(Exception):
    """The connection stayed silent between requests for the idle timeout."""


@dataclass(frozen=True, slots=True)
class _Limits:
    idle_timeout: float
    read_timeout: float


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    payload: bytes
    stream: AsyncIterator[bytes] | None = None


def error_body(code: str, message: str) -> dict[str, object]:
    """The JSON shape of every error response."""
    return {"error": {"code": code, "message": message}}


def _encode(body: object) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON; a handler returning them is a bug (500).
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _error_reply(code: str, message: str) -> _Reply:
    return _Reply(codes.http_status(code), _encode(error_body(code, message)))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _render(conn: h11.Connection, reply: _Reply, *, close: bool, head: bool = False) -> bytes:
    """The response's bytes: JSON type and length (none on a 204, as RFC 9110 asks), and no
    body where HTTP forbids one (HEAD, 204, 304)."""
    headers = [("content-type", "application/json")]
    if reply.status != 204:
        headers.append(("content-length", str(len(reply.payload))))
    if close:
        headers.append(("connection", "close"))
    response = h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
    data = conn.send(response) or b""
    if not head and reply.status not in _NO_BODY_STATUSES:
        data += conn.send(h11.Data(data=reply.payload)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


def _parse_target(target: bytes) -> tuple[str, dict[str, str]]:
    """Percent-decoded path and query parameters; a repeated parameter is a 400."""
    try:
        parts = urlsplit(target.decode("ascii"))
        path = unquote(parts.path or "/", errors="strict")
        pairs = parse_qsl(
            parts.query, keep_blank_values=True, errors="strict", max_num_fields=_MAX_QUERY_FIELDS
        )
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise _HttpError(f"malformed request target: {exc}", code="E-HTTP-BAD-REQUEST") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise _HttpError(
                f"query parameter {name!r} is given more than once", code="E-HTTP-BAD-REQUEST"
            )
        query[name] = value
    return path, query


def _check_head(request: h11.Request) -> None:
    """What h11 lets through and we do not: CONNECT, a head over the limit that arrived in
    one read (h11 bounds only incomplete heads), Content-Length together with chunked."""
    if request.method == b"CONNECT":
        raise _HttpError("CONNECT is not supported on the control socket", code="E-METHOD")
    size = len(request.method) + len(request.target) + 12  # request line, CRLFs
    size += sum(len(name) + len(value) + 4 for name, value in request.headers)
    if size > _MAX_HEAD_BYTES:
        raise _HttpError(
            f"request line and headers are over {_MAX_HEAD_BYTES} bytes",
            code="E-HTTP-HEADERS-TOO-LARGE",
        )
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise _HttpError(
            "Content-Length and Transfer-Encoding together are ambiguous; send one",
            code="E-HTTP-BAD-REQUEST",
        )


def _header_dict(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        result[name] = f"{result[name]}, {value}" if name in result else value
    return result


@dataclass(frozen=True, slots=True)
class Admitted:
    """A connection the server has let in: who, as what, and the shared body budget."""

    peer: Peer
    admission: Admission
    gate: Gate
    bodies: BodyBudget


class _Session:
    """One client connection: a loop of read request head, authorise it (the gate), read the
    body within the peer's limit and the shared budget, call handler, write response."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        limits: _Limits,
        who: Admitted,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._limits = limits
        self._who = who
        self._peer = who.peer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self._deadline: float | None = None  # set by the first byte of a request
        self._eof = False
        self._method = b""
        self._body_limit = 0
        self._held = 0  # body bytes taken from the shared budget

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            self._release()

    def _release(self) -> None:
        self._who.bodies.give(self._held, admin=self._who.admission.admin)
        self._held = 0

    async def _loop(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except _Idle:
                return
            except _HttpError as err:
                if not self._eof:  # a peer that hung up mid-request gets no answer
                    await self._send(_error_reply(err.code, err.message), close=True)
                return
            if request is None:
                return
            reply = await self._call_handler(request)
            del request
            self._release()
            if reply.stream is not None:
                await send_stream(self._h11, reply.stream, self._reader, self._write)
                return
            await self._send(reply, close=False)
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                return
            self._h11.start_next_cycle()

    async def _read_request(self) -> HttpRequest | None:
        loop = asyncio.get_running_loop()
        pipelined, _ = self._h11.trailing_data
        self._deadline = loop.time() + self._limits.read_timeout if pipelined else None
        self._method = b""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _HttpError(
                f"expected a request, got {type(event).__name__}", code="E-HTTP-BAD-REQUEST"
            )
        self._method = event.method
        _check_head(event)
        path, query = _parse_target(event.target)
        try:  # authorisation on the head: nothing of the body is read before it
            self._body_limit = self._who.gate.head(self._peer, event.method.decode(), path)
        except AitherError as exc:
            raise _HttpError(exc.message, code=exc.code) from None
        self._check_length(event)
        if self._h11.they_are_waiting_for_100_continue:
            await self._write(
                self._h11.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=_reason(100))
                )
            )
        body = await self._read_body()
        return HttpRequest(
            method=event.method.decode("ascii"),
            path=path,
            query=query,
            headers=_header_dict(event.headers),
            body=body,
            peer=self._peer,
        )

    def _check_length(self, request: h11.Request) -> None:
        for name, value in request.headers:
            # h11 has checked that Content-Length is digits and not contradicted.
            if name == b"content-length" and int(value) > self._body_limit:
                raise _HttpError(self._too_large(), code="E-HTTP-BODY-TOO-LARGE")

    def _too_large(self) -> str:
        return f"request body is larger than {self._body_limit} bytes"

    async def _read_body(self) -> bytes:
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            if not isinstance(event, h11.Data):
                raise _HttpError(
                    f"unexpected {type(event).__name__} in request body", code="E-HTTP-BAD-REQUEST"
                )
            if len(body) + len(event.data) > self._body_limit:  # only chunked bodies get here
                raise _HttpError(self._too_large(), code="E-HTTP-BODY-TOO-LARGE")
            if not self._who.bodies.take(len(event.data), admin=self._who.admission.admin):
                raise _HttpError(
                    "the daemon holds too many request bodies now; retry later",
                    code="E-HTTP-BUSY",
                )
            self._held += len(event.data)
            body += event.data

    async def _next_event(self) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _HttpError(
                    f"malformed HTTP request: {exc}", code=_code_for(exc.error_status_hint)
                ) from None
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # cannot happen: we never read ahead of our response
                raise _HttpError(
                    "request arrived while the previous one was unanswered",
                    code="E-HTTP-BAD-REQUEST",
                )
            await self._receive()

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline
        waiting = deadline is None
        timeout = self._limits.idle_timeout if deadline is None else deadline - loop.time()
        try:
            # asyncio.timeout, not wait_for: no task per read (a third of a request's cost)
            async with asyncio.timeout(max(timeout, 0.0)):
                data = await self._reader.read(_READ_CHUNK)
        except TimeoutError:
            if waiting:
                raise _Idle from None
            limit = self._limits.read_timeout
            raise _HttpError(
                f"request not complete within {limit:g} s", code="E-HTTP-TIMEOUT"
            ) from None
        if waiting:
            self._deadline = loop.time() + self._limits.read_timeout
        self._eof = not data
        self._h11.receive_data(data)

    async def _call_handler(self, request: HttpRequest) -> _Reply:
        try:
            response = await self._handler(request)
            if not 200 <= response.status <= 599:
                raise ValueError(f"handler returned HTTP status {response.status}")
            if response.stream is not None:
                return _Reply(response.status, b"", response.stream)
            return _Reply(response.status, _encode(response.body))
        except Exception:
            log.exception("control handler failed method=%s path=%s", request.method, request.path)
            return _error_reply("E-INTERNAL", "internal error; see the daemon log")

    async def _send(self, reply: _Reply, *, close: bool) -> None:
        await self._write(_render(self._h11, reply, close=close, head=self._method == b"HEAD"))

    async def _write(self, data: bytes | None) -> None:
        if data:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size() == 0:
                return  # the kernel took it all: nothing to wait for
            async with asyncio.timeout(self._limits.read_timeout):
                await self._writer.drain()


def refusal_bytes(code: str, message: str) -> bytes:
    """A complete error answer (`E-HTTP-BUSY` 503, `E-FORBIDDEN` 403 ...) that closes the
    connection, for connections refused at accept."""
    return _render(h11.Connection(h11.SERVER), _error_reply(code, message), close=True)
