"""The two hot endpoints as plain ASGI (layer L3 adapter, no framework objects).

Owns: `POST /v1/evaluate` and `POST /v1/evaluate/mcp` — bounded body reading (64 KiB, as
the seed: `Content-Length` first, then while reading a chunked body), agent
authentication, and the seed-shaped answer (429 with `Retry-After` when rate limited).
Starlette routes to them (`gateway.app`) but builds no Request or Response for them: per
call that saved more than the evaluation itself costs (docs/benchmarks-gateway.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aitherfwd import codes
from aitherfwd.gateway.evaluate import Call, Decision, ReasonClass
from aitherfwd.gateway.mcp import McpError, denied_response, parse_tools_call
from aitherfwd.gateway.service import Gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
MAX_BODY = 64 * 1024
_JSON = (b"content-type", b"application/json")
ALLOWED: Any = {"allowed": True}  # never mutated: `respond` sends its bytes
_ALLOWED_PAYLOAD = json.dumps(ALLOWED, separators=(",", ":")).encode()
_ALLOWED_LENGTH = (b"content-length", str(len(_ALLOWED_PAYLOAD)).encode())


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def peer(scope: Scope) -> str | None:
    """The caller's address (None on a Unix socket)."""
    client = scope.get("client")
    return str(client[0])[:64] if client and client[0] else None


def bearer(scope: Scope) -> str | None:
    auth = header(scope, b"authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


async def read_json(scope: Scope, receive: Receive) -> Any:
    length = header(scope, b"content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise Refused("E-HTTP-BODY-TOO-LARGE", f"the body is over {MAX_BODY} bytes")
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Refused("E-JSON", "invalid request body")  # the client went away
        data += message.get("body", b"")
        if len(data) > MAX_BODY:
            raise Refused("E-HTTP-BODY-TOO-LARGE", f"the body is over {MAX_BODY} bytes")
        if not message.get("more_body", False):
            break
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise Refused("E-JSON", "invalid request body") from None


def answer(decision: Decision, extra: dict[str, Any] | None = None) -> tuple[int, Any, Headers]:
    if decision.allowed and not decision.reason and decision.destination is None and not extra:
        return 200, ALLOWED, []  # the common answer, encoded once
    body: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        body["reason"] = decision.reason
    if decision.allowed and decision.destination is not None:
        d = decision.destination
        body["network"] = {"host": d.host, "port": d.port, "ttl": d.ttl}
    body.update(extra or {})
    if decision.reason_class is ReasonClass.RATE_LIMITED:
        retry = str(max(1, math.ceil(decision.retry_after))).encode()
        return 429, body, [(b"retry-after", retry)]
    return 200, body, []


def error_body(code: str, message: str, **more: Any) -> tuple[int, Any, Headers]:
    return codes.http_status(code), {"error": {"code": code, "message": message, **more}}, []


async def respond(send: Send, status: int, body: Any, headers: Headers) -> None:
    if body is ALLOWED:
        payload, length = _ALLOWED_PAYLOAD, _ALLOWED_LENGTH
    else:
        payload = json.dumps(body, separators=(",", ":")).encode()
        length = (b"content-length", str(len(payload)).encode())
    await send(
        {"type": "http.response.start", "status": status, "headers": [_JSON, length, *headers]}
    )
    await send({"type": "http.response.body", "body": payload})


Handler = Callable[[Scope, Receive], Awaitable[tuple[int, Any, Headers]]]


class Endpoint:
    """An ASGI app around a handler; `Refused` becomes its coded error answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self.handler(scope, receive)
        except Refused as exc:
            status, body, headers = error_body(exc.code, exc.message)
        await respond(send, status, body, headers)


def endpoints(gateway: Gateway) -> tuple[Endpoint, Endpoint]:
    """(`/v1/evaluate`, `/v1/evaluate/mcp`)."""

    def agent(scope: Scope) -> str:
        name = gateway.agent_for(bearer(scope) if gateway.requires_agent_token else None)
        if name is None:
            raise Refused("E-GW-UNAUTHORIZED", "a valid agent token is required (Bearer)")
        return name

    async def evaluate(scope: Scope, receive: Receive) -> tuple[int, Any, Headers]:
        who = agent(scope)
        body = await read_json(scope, receive)
        if not isinstance(body, dict) or not isinstance(body.get("tool"), str):
            raise Refused("E-SCHEMA", 'expected {"tool": "...", "params": {...}}')
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise Refused("E-SCHEMA", "params must be an object")
        return answer(await gateway.decide(Call(body["tool"], params, who, peer(scope))))

    async def evaluate_mcp(scope: Scope, receive: Receive) -> tuple[int, Any, Headers]:
        who = agent(scope)
        try:
            call = parse_tools_call(await read_json(scope, receive))
        except McpError as exc:
            raise Refused("E-SCHEMA", str(exc)) from None
        decision = await gateway.decide(Call(call.tool, call.arguments, who, peer(scope)))
        extra: dict[str, Any] = {"id": call.id}
        if not decision.allowed:
            extra["jsonrpc_error"] = denied_response(call.id, decision.reason)
        return answer(decision, extra)

    return Endpoint(evaluate), Endpoint(evaluate_mcp)
