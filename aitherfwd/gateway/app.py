"""The gateway's HTTP API (layer L3 adapter; the only importer of Starlette).

Owns: seed 003's routes — `POST /v1/evaluate`, `GET /health`, `GET /v1/stats`,
`POST /v1/reload` (bearer service token) — and ours: `POST /v1/evaluate/mcp` (an MCP
`tools/call` JSON-RPC request as it is), `GET /metrics`. The two evaluate routes are plain ASGI
endpoints (`gateway.hotpath`: bodies bounded, agents authenticated, 429 when rate limited)
that a POST to their exact path reaches without passing through Starlette (`Evaluate`);
everything else, and every other method on them, is Starlette's. Errors are
`{"error": {"code", "message"}}`. The decisions themselves are `Gateway`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aitherfwd import codes
from aitherfwd.gateway import hotpath, metrics
from aitherfwd.gateway.service import Gateway


def _error(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, codes.http_status(code))


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


class Evaluate:
    """`POST` to an evaluate path goes straight to its endpoint; the rest to Starlette.
    Starlette's middleware stack and router cost more per call than the decision itself
    (docs/benchmarks-gateway.md); its routes stay for the other methods (405)."""

    def __init__(self, app: Starlette, routes: dict[str, hotpath.Endpoint]) -> None:
        self.app, self.routes = app, routes

    async def __call__(
        self, scope: hotpath.Scope, receive: hotpath.Receive, send: hotpath.Send
    ) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    gateway: Gateway,
    on_startup: Sequence[Callable[[], Awaitable[object]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
) -> Evaluate:
    registry = metrics.registry(gateway)

    evaluate, evaluate_mcp = hotpath.endpoints(gateway)

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

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/evaluate", evaluate, methods=["POST"]),
            Route("/v1/evaluate/mcp", evaluate_mcp, methods=["POST"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/v1/reload", reload, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=_lifespan(on_startup, on_shutdown),
    )
    return Evaluate(app, {"/v1/evaluate": evaluate, "/v1/evaluate/mcp": evaluate_mcp})


def _lifespan(
    on_startup: Sequence[Callable[[], Awaitable[object]]],
    on_shutdown: Sequence[Callable[[], Awaitable[object]]],
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """A lifespan (Starlette 1.x has no on_startup/on_shutdown; 0.26, Debian's, has both)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for start in on_startup:
            await start()
        try:
            yield
        finally:
            for stop in on_shutdown:
                await stop()

    return lifespan
