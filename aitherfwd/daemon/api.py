"""The control API, the only module of the daemon that knows HTTP (layer L3).

Owns: a table of small handlers, each guarded by a role; mapping `(method, path)` to a
handler; authorising the peer (SO_PEERCRED uid/gid/groups) — as the transport's gate at
accept (a peer without any role is refused before anything is read) and on the request head
(route and role, then the body limit of that role, before the body is read); turning
request bodies into typed specs (control.schema), calling the services, and
rendering their results (daemon/views.py). Errors become `{"error": {"code", "message"}}`
with the status `aitherfwd.codes` registers for the code — the only place a coded
error meets HTTP; a rejected request or a denial is audited, aggregated per peer
(daemon/rejections.py). Sandbox grants and outbound
evaluation by host name live in daemon/sandbox_api.py, in the same table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from aitherfwd import codes
from aitherfwd.adapters import memory
from aitherfwd.adapters.control_budget import Admission
from aitherfwd.adapters.control_server import HttpRequest, HttpResponse, Peer
from aitherfwd.audit_records import AccessDenied, RequestRejected
from aitherfwd.control import bulkblocks, jsonbody, schema
from aitherfwd.control.limits import ControlLimits
from aitherfwd.daemon import fleet_api, sandbox_api, views
from aitherfwd.daemon.budgets import RequestBudgets
from aitherfwd.daemon.rejections import Rejections, Sink
from aitherfwd.daemon.services import Services
from aitherfwd.daemon.watch import WatchHub
from aitherfwd.errors import AitherError, ApplyError, RequestError
from aitherfwd.roles import Authorizer

log = logging.getLogger(__name__)
Handler = Callable[[Services, HttpRequest], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # exact, or a prefix ending in "/" followed by one argument (which may be a CIDR)
    role: str
    handler: Handler
    bulk: bool = False  # the body may use the role's whole limit, beyond max_body_bytes


async def health(d: Services, req: HttpRequest) -> Any:
    gen = d.generations.current()
    return {"status": "ok", "generation": gen.number, "policy_sha256": gen.policy.sha256}


async def status(d: Services, req: HttpRequest) -> Any:
    return views.status(d)


async def list_blocks(d: Services, req: HttpRequest) -> Any:
    d.blocks.expire()  # recorded (store, audit), not only left out of the listing
    active = d.blocks.table.active(d.ports.clock.now())
    return {"count": len(active), "blocks": [views.block_view(b) for b in active]}


def actor(req: HttpRequest) -> dict[str, int]:
    return {"uid": req.peer.uid, "gid": req.peer.gid, "pid": req.peer.pid}


async def add_blocks(d: Services, req: HttpRequest) -> Any:
    body = jsonbody.decode(req.body)
    specs = bulkblocks.bulk_v4(body) or schema.parse_blocks(body)
    blocks = await d.blocks.block(specs, actor=actor(req))
    if len(blocks) >= memory.LARGE_BATCH:  # freed once answered, then the heap trimmed
        memory.trim_later((body, specs))
    return {"count": len(blocks), "blocked": views.block_views(blocks, 1000)}


async def delete_block(d: Services, req: HttpRequest) -> Any:
    segment = req.path.removeprefix("/v1/blocks/")
    blk = await d.blocks.unblock(schema.network_from_path(segment), actor=actor(req))
    return {"unblocked": views.block_view(blk)}


async def evaluate(d: Services, req: HttpRequest) -> Any:
    spec = schema.parse_evaluate(jsonbody.decode(req.body))
    if spec.dest_host is not None:
        return await sandbox_api.evaluate_host(d, spec)
    judged = d.queries.evaluate(spec)
    return views.judgement_view(judged, outbound=spec.direction == "outbound", expect=spec.expect)


async def threats(d: Services, req: HttpRequest) -> Any:
    specs = schema.parse_threats(jsonbody.decode(req.body))
    if req.charge is not None:
        req.charge(len(specs))  # E-RATE-LIMITED: the reporter's threat_events_per_uid
    return views.threats_view(await d.reputation.threats(specs, actor=actor(req)))


async def explain(d: Services, req: HttpRequest) -> Any:
    address = schema.parse_address(req.path.removeprefix("/v1/explain/"), "address")
    ports, protocol = schema.parse_explain_query(req.query)
    return views.explain(d, address, ports, protocol)


async def reload(d: Services, req: HttpRequest) -> Any:
    force = schema.parse_flag_body(jsonbody.decode(req.body), "force")
    return (await d.generations.reload(force=force, trigger="api")).as_dict()


ROUTES = (
    Route("GET", "/v1/health", "read", health),
    Route("GET", "/v1/status", "read", status),
    Route("GET", "/v1/blocks", "read", list_blocks),
    Route("POST", "/v1/blocks", "admin", add_blocks, bulk=True),
    Route("DELETE", "/v1/blocks/", "admin", delete_block),
    Route("POST", "/v1/evaluate", "read", evaluate),
    Route("POST", "/v1/reload", "admin", reload),
    Route("POST", "/v1/threats", "report", threats),
    Route("GET", "/v1/explain/", "read", explain),
    Route("POST", "/v1/sandbox", "sandbox", sandbox_api.grant),
    Route("GET", "/v1/sandbox", "read", sandbox_api.list_grants),
    Route("DELETE", "/v1/sandbox/", "sandbox", sandbox_api.revoke),
    Route("GET", "/v1/watch", "read", lambda d, req: _no_handler()),  # Api.__call__ streams it
    Route("GET", "/v1/fleet", "read", fleet_api.status),
    Route("POST", "/v1/fleet/blocks", "admin", fleet_api.add_blocks, bulk=True),
    Route("DELETE", "/v1/fleet/blocks/", "admin", fleet_api.delete_block),
    Route("POST", "/v1/fleet/policy", "admin", fleet_api.push_policy, bulk=True),
)


async def _no_handler() -> Any:
    raise AssertionError("GET /v1/watch is answered by Api.watch")


def _find(method: str, path: str) -> Route:
    known_path = False
    for route in ROUTES:
        prefix = route.path.endswith("/")
        if prefix:
            hit = path.startswith(route.path) and len(path) > len(route.path)
        else:
            hit = path == route.path
        if hit:
            known_path = True
            if route.method == method:
                return route
    if known_path:
        raise RequestError(f"{method} is not allowed on {path}", code="E-METHOD")
    raise RequestError(f"no such endpoint: {path}", code="E-NOT-FOUND")


def _actor(peer: Peer) -> dict[str, int]:
    return {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid}


class Api:
    """The handler of the control socket, and its gate (`admit`, `head`)."""

    def __init__(
        self,
        services: Services,
        authorizer: Authorizer,
        *,
        limits: ControlLimits | None = None,
        max_body: int = 1 << 20,
        noise: Sink | None = None,
        reject_interval: float = 10.0,
    ) -> None:
        self.services = services
        self.authorizer = authorizer
        self.limits = limits or ControlLimits()
        self.max_body = max_body
        self.clock = services.ports.clock
        self.rejections = Rejections(
            services.ports.audit, noise or services.ports.audit, reject_interval
        )
        self.budgets = RequestBudgets(self.limits.requests_per_uid, self.clock.monotonic)
        self._admins_busy = 0  # admin requests in flight; other handlers wait for none
        self._admins_idle = asyncio.Event()
        self._admins_idle.set()
        self.event_budgets = RequestBudgets(
            self.limits.threat_events_per_uid,
            self.clock.monotonic,
            unit="threat events",
            setting="threat_events_per_uid",
        )
        self._watch: WatchHub | None = None  # hooked into the services at the first watch

    def admit(self, peer: Peer) -> Admission | None:
        """At accept: None (refused before any read) for a peer without any role."""
        roles = self.authorizer.roles_of(peer.uid, peer.gid, peer.groups)
        if not roles:
            denial = AccessDenied("deny", _actor(peer), method="", path="", role="any")
            self.rejections.denied(self.clock.now(), denial)
            return None
        return Admission(admin="admin" in roles)

    def head(self, peer: Peer, method: str, path: str) -> int:
        """On the request head, before its body: the body limit, or a coded refusal
        (audited like any other)."""
        try:
            route = self._authorised(peer, method, path)
            if route.role != "admin" and not self._is_admin(peer):
                self.budgets.take(peer.uid)  # E-RATE-LIMITED: a flood must not own the loop
        except RequestError as exc:
            if exc.code != "E-FORBIDDEN":
                self._audit_rejected(peer, method, path, exc)
            raise
        limit = self.limits.body_limit(route.role)
        return limit if route.bulk else min(limit, self.max_body)

    def _is_admin(self, peer: Peer) -> bool:
        return "admin" in self.authorizer.roles_of(peer.uid, peer.gid, peer.groups)

    def _authorised(self, peer: Peer, method: str, path: str) -> Route:
        route = _find(method, path)
        if not self.authorizer.allows(route.role, peer.uid, peer.gid, peer.groups):
            denial = AccessDenied("deny", _actor(peer), method, path, route.role)
            self.rejections.denied(self.clock.now(), denial)
            raise RequestError(
                f"uid {peer.uid} lacks the role '{route.role}' for {method} {route.path}",
                code="E-FORBIDDEN",
            )
        return route

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        if self._is_admin(req.peer):
            self._admins_busy += 1
            self._admins_idle.clear()
            try:
                return await self._answer(req)
            finally:
                self._admins_busy -= 1
                if not self._admins_busy:
                    self._admins_idle.set()
        # Administrators first: while an admin request is in flight no other request's
        # handler starts, so under a flood from other roles the admin's request does not
        # queue behind theirs on the event loop (they wait here without costing anything).
        await self._admins_idle.wait()
        return await self._answer(
            replace(req, charge=partial(self.event_budgets.take, req.peer.uid))
        )

    async def _answer(self, req: HttpRequest) -> HttpResponse:
        try:
            route = self._authorised(req.peer, req.method, req.path)
            if route.path == "/v1/watch":
                return self._watching(req.peer)
            return HttpResponse(200, await route.handler(self.services, req))
        except ApplyError as exc:  # an element write of this request, refused by the kernel
            message = f"the kernel refused the change: {exc.message}"
            return self._rejected(req, RequestError(message, code="E-KERNEL-REFUSED"))
        except AitherError as exc:
            if codes.lookup(exc.code).http is None:  # not meant for an answer: a daemon fault
                log.error(
                    "request failed path=%s code=%s error=%s", req.path, exc.code, exc.message
                )
                return _error(500, exc)
            return self._rejected(req, exc)

    def _watching(self, peer: Peer) -> HttpResponse:
        if self._watch is None:
            lim = self.limits
            self._watch = WatchHub(self.services, lim.watchers, lim.watchers_per_uid)
        watcher = self._watch.open(peer.uid, admin=self._is_admin(peer))
        return HttpResponse(200, None, self._watch.stream(watcher))

    def _rejected(self, req: HttpRequest, exc: AitherError) -> HttpResponse:
        if exc.code != "E-FORBIDDEN":  # a denial was audited as access_denied
            self._audit_rejected(req.peer, req.method, req.path, exc)
        return _error(codes.http_status(exc.code), exc)

    def _audit_rejected(self, peer: Peer, method: str, path: str, exc: AitherError) -> None:
        record = RequestRejected(
            method=method[:16],
            path=path,
            status=codes.http_status(exc.code),
            code=exc.code,
            reason=exc.message,
            actor=_actor(peer),
        )
        self.rejections.rejected(self.clock.now(), record)


def _error(status: int, exc: AitherError) -> HttpResponse:
    return HttpResponse(status, {"error": {"code": exc.code, "message": exc.message}})
