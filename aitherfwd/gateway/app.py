"""The gateway's HTTP API (layer L3 adapter; the only importer of Starlette).

Owns: seed 003's routes — `POST /v1/evaluate`, `GET /health`, `GET /v1/stats`,
`POST /v1/reload` (bearer service token) — and ours: `POST /v1/evaluate/mcp` (an MCP
`tools/call` JSON-RPC request as it is), `GET /metrics`. Bodies are bounded (64 KiB, as
the seed) before they are parsed; agents authenticate with `Authorization: Bearer` when
agent tokens are configured; a rate-limited call is a 429 with `Retry-After`. Errors are
`{"error": {"code", "message"}}`. The decisions themselves are `Gateway`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aitherfwd import codes
from aitherfwd.gateway import metrics
from aitherfwd.gateway.evaluate import Call, Decision, ReasonClass
from aitherfwd.gateway.mcp import McpError, denied_response, parse_tools_call
from aitherfwd.gateway.service import Gateway

MAX_BODY = 64 * 1024


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, codes.http_status(code))


async def _body(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise _Refused("E-HTTP-BODY-TOO-LARGE", f"the body is over {MAX_BODY} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise _Refused("E-HTTP-BODY-TOO-LARGE", f"the body is over {MAX_BODY} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise _Refused("E-JSON", "invalid request body") from None


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _answer(decision: Decision, extra: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        body["reason"] = decision.reason
    if decision.allowed and decision.destination is not None:
        d = decision.destination
        body["network"] = {"host": d.host, "port": d.port, "ttl": d.ttl}
    body.update(extra or {})
    if decision.reason_class is ReasonClass.RATE_LIMITED:
        retry = str(max(1, math.ceil(decision.retry_after)))
        return JSONResponse(body, 429, headers={"Retry-After": retry})
    return JSONResponse(body)


def build_app(
    gateway: Gateway,
    on_startup: Sequence[Callable[[], Any]] = (),
    on_shutdown: Sequence[Callable[[], Any]] = (),
) -> Starlette:
    registry = metrics.registry(gateway)

    def agent(request: Request) -> str:
        name = gateway.agent_for(_bearer(request))
        if name is None:
            raise _Refused("E-GW-UNAUTHORIZED", "a valid agent token is required (Bearer)")
        return name

    async def evaluate(request: Request) -> Response:
        try:
            who = agent(request)
            body = await _body(request)
            if not isinstance(body, dict) or not isinstance(body.get("tool"), str):
                raise _Refused("E-SCHEMA", 'expected {"tool": "...", "params": {...}}')
            params = body.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise _Refused("E-SCHEMA", "params must be an object")
        except _Refused as exc:
            return _error(exc.code, exc.message)
        return _answer(await gateway.decide(Call(body["tool"], params, who)))

    async def evaluate_mcp(request: Request) -> Response:
        try:
            who = agent(request)
            call = parse_tools_call(await _body(request))
        except _Refused as exc:
            return _error(exc.code, exc.message)
        except McpError as exc:
            return _error("E-SCHEMA", str(exc))
        decision = await gateway.decide(Call(call.tool, call.arguments, who))
        extra: dict[str, Any] = {"id": call.id}
        if not decision.allowed:
            extra["jsonrpc_error"] = denied_response(call.id, decision.reason)
        return _answer(decision, extra)

    async def health(request: Request) -> Response:
        s = gateway.stats
        return JSONResponse(
            {"status": "ok", "total_requests": s.total, "denied_requests": s.denied}
        )

    async def stats(request: Request) -> Response:
        s, p = gateway.stats, gateway.policy
        return JSONResponse(
            {
                "default_action": str(p.default),
                "allowed_tools": len(p.allow),
                "denied_tools": len(p.deny),
                "total_requests": s.total,
                "denied_requests": s.denied,
                "rate_limited_requests": s.rate_limited,
                "grants": {"granted": s.grants, "refused": s.grants_refused},
                "reloads": dict(s.reloads),
                "policy_sha256": p.sha256,
                "last_reload_errors": gateway.last_errors,
            }
        )

    async def reload(request: Request) -> Response:
        if not gateway.may_reload(_bearer(request)):
            why = (
                "forbidden: invalid service token"
                if gateway.service_token
                else "forbidden: no service token is configured (SERVICE_TOKEN_PATH)"
            )
            return _error("E-FORBIDDEN", why)
        result = gateway.reload("api")
        if not result.ok:
            return JSONResponse(
                {
                    "error": {
                        "code": "E-GW-RELOAD-REJECTED",
                        "message": "the policy is invalid; the running one stays",
                        "diagnostics": gateway.last_errors,
                    }
                },
                codes.http_status("E-GW-RELOAD-REJECTED"),
            )
        return JSONResponse({"status": "reloaded", "policy_sha256": gateway.policy.sha256})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/evaluate", evaluate, methods=["POST"]),
            Route("/v1/evaluate/mcp", evaluate_mcp, methods=["POST"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/v1/reload", reload, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
    )
