"""`FirewallMiddleware`: the firewall's policy at the HTTP layer, for any ASGI application.

Owns: the options (docs/middleware.md), the decision for each HTTP or WebSocket request —
the client address (clientaddr.py; a malformed forwarding header is a 400), then bypass
zones and the local verdict (view.py) against the policy and blocks the follower keeps
current (follower.py, state.py), or, without a usable daemon, `fail_open` — its record
in the audit file when there is one (auditing.py: sampled, written off the loop) — the denial
answers (403 JSON `{"error": "forbidden", "rule", "request_id"}`, 429 for a rate limit,
503 when the daemon is needed and unreachable; nothing of the policy's internals), and the
layer-7 threat reports: `report_threshold` answers 401/403 of the application to one client
within `report_window` seconds are one `HTTP_AUTH_FAILURES` threat event for that client.

Pure ASGI (scope, receive, send): no framework is imported. Starts its follower at the
first request or at the lifespan startup, stops it at the lifespan shutdown (or `close()`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from aitherfwd.asgi.auditing import MiddlewareAudit
from aitherfwd.asgi.clientaddr import (
    Client,
    client_address,
    header_names,
    parse_address,
    parse_networks,
)
from aitherfwd.asgi.follower import Follower, Reporter
from aitherfwd.asgi.state import Followed
from aitherfwd.asgi.view import View, judge
from aitherfwd.audit_sample import DEFAULT_INTERVAL, DEFAULT_PER_SOURCE
from aitherfwd.dynamic.buckets import TokenBuckets
from aitherfwd.evaluator import RATE_LIMITED, Verdict
from aitherfwd.policy.model import Action, IPAddress

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("aitherfwd.asgi")
DEFAULT_SOCKET = "/run/aitherfwd/control.sock"
DEFAULT_HEADERS = ("CF-Connecting-IP", "X-Forwarded-For", "X-Real-IP")
DEFAULT_BYPASS = ("loopback", "docker")
REPORTED_STATUSES = frozenset({401, 403})
MAX_TRACKED = 10_000  # clients whose 401/403 answers are counted at once
CLIENT_CACHE = 4096  # (peer, forwarding headers) -> client, per policy view
CACHED_HEADER_BYTES = 256  # longer forwarding headers are walked every time
UNIX_PEER = ipaddress.IPv4Address("127.0.0.1")  # an app served on a Unix socket: a local peer
# the middleware's own verdicts, for the audit trail (no rule of the policy decided)
FAIL_OPEN = Verdict("allow", None, None, "fail open: no policy from the daemon yet")
UNAVAILABLE = Verdict("deny", None, None, "firewall unavailable: the daemon is unreachable")
MALFORMED = Verdict("deny", None, None, "malformed forwarding header from a trusted proxy")


class FirewallMiddleware:
    """`app = FirewallMiddleware(app)` or `app.add_middleware(FirewallMiddleware, ...)`."""

    def __init__(
        self,
        app: App,
        *,
        socket: str | Path = DEFAULT_SOCKET,
        trusted_proxies: Sequence[str] = (),
        client_ip_headers: Sequence[str] = DEFAULT_HEADERS,
        fail_open: bool = True,
        bypass_zones: Sequence[str] = DEFAULT_BYPASS,
        authenticated: Callable[[Scope], bool] | None = None,
        port: int | None = None,
        deny_status: int = 403,
        report_threats: bool = True,
        report_threshold: int = 20,
        report_window: float = 60.0,
        audit_path: str | Path | None = None,
        audit_allowed: bool = False,
        audit_per_source: int = DEFAULT_PER_SOURCE,
        audit_interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        cidrs, zones = parse_networks(trusted_proxies)
        self.headers = header_names(client_ip_headers)
        self._wanted = frozenset(self.headers)
        self._clients: tuple[View | None, dict[tuple[Any, ...], Client]] = (None, {})
        self.fail_open = fail_open
        self.authenticated = authenticated
        self.port = port
        self.deny_status = deny_status
        self.report_threats = report_threats
        self.report_threshold = max(1, report_threshold)
        self.report_window = report_window
        self.clock = clock
        self.state = Followed(cidrs, zones, tuple(bypass_zones))
        self.follower = Follower(Path(socket), self.state, clock)
        self.reporter = Reporter(Path(socket), self.state)
        self.buckets = TokenBuckets()
        self._failures: OrderedDict[IPAddress, tuple[float, int]] = OrderedDict()
        self.audit = (
            MiddlewareAudit(
                audit_path,
                audit_allowed=audit_allowed,
                per_source=audit_per_source,
                interval=audit_interval,
                clock=clock,
            )
            if audit_path is not None
            else None
        )

    # --- the application's lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.follower.start()

    def close(self) -> None:
        self.follower.stop()
        self.reporter.stop()
        if self.audit is not None:
            self.audit.close()  # writes what is queued and the last aggregated lines

    def reopen_audit(self) -> None:
        """Reopen the audit file before its next line (call it on SIGHUP after logrotate)."""
        if self.audit is not None:
            self.audit.reopen()

    def stats(self) -> dict[str, int]:
        """Counters for the application's metrics: requests, denied, bypassed, spoofed,
        malformed, fail_open_admitted, unavailable, daemon_lost, reports_sent …; live (0/1),
        generation, blocks; with an audit file, audit_lines, audit_left_out, audit_dropped,
        audit_errors."""
        out = self.state.stats()
        if self.audit is not None:
            out.update(self.audit.stats())
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan(receive), send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.follower.start()
        refusal, client = self.decide(scope)
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        if client is None or not self.report_threats:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._watching(client, send))

    def _lifespan(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                self.start()
            elif message.get("type") == "lifespan.shutdown":
                self.close()
            return message

        return wrapped

    # --- the decision -------------------------------------------------------------------------

    def decide(
        self, scope: Scope
    ) -> tuple[tuple[int, dict[str, Any], str] | None, IPAddress | None]:
        """(None, client) to pass the request on, or ((status, body, request id), client)."""
        if self.audit is None:
            refusal, client, _ = self._decide(scope)
            return refusal, client
        started = time.perf_counter()
        view = self.state.view
        refusal, client, verdict = self._decide(scope)
        latency_us = (time.perf_counter() - started) * 1e6
        self.audit.record(
            scope,
            view,
            verdict,
            client,
            _peer(scope),
            self.port or _server_port(scope),
            (refusal[0], refusal[2]) if refusal is not None else None,
            latency_us,
        )
        return refusal, client

    def _decide(
        self, scope: Scope
    ) -> tuple[tuple[int, dict[str, Any], str] | None, IPAddress | None, Verdict]:
        counters = self.state.counters
        counters["requests"] += 1
        view = self.state.view
        if view is None or (not self.state.live and not self.fail_open):
            if self.fail_open:
                counters["fail_open_admitted"] += 1
                return None, None, FAIL_OPEN
            counters["unavailable"] += 1
            return _answer(503, "firewall unavailable"), None, UNAVAILABLE
        found = self._client(scope, view)
        if found.spoofed:
            counters["spoofed"] += 1
        if found.address is None:
            counters["malformed"] += 1
            return _answer(400, "malformed forwarding header"), None, MALFORMED
        client = found.address
        auth = False
        if view.needs_auth and self.authenticated is not None:
            auth = bool(self.authenticated(scope))
        port = self.port or _server_port(scope)
        verdict = judge(
            view, client, port, scope.get("path", "/"), auth, self.clock(), self.state, self.buckets
        )
        if verdict.verdict == str(Action.ALLOW):
            if verdict.reason == "bypass":
                counters["bypassed"] += 1
            return None, client, verdict
        counters["denied"] += 1
        status = 429 if verdict.verdict == RATE_LIMITED else self.deny_status
        refusal = _answer(status, "rate limited" if status == 429 else "forbidden", verdict.rule)
        log.debug(
            "request refused request_id=%s client=%s verdict=%s rule=%s reason=%s",
            refusal[2],
            client,
            verdict.verdict,
            verdict.rule,
            verdict.reason,
        )
        return refusal, client, verdict

    def _client(self, scope: Scope, view: View) -> Client:
        """`client_address`, remembered per (peer, forwarding header lines) for the current
        view: proxies and clients repeat, and the walk costs more than the verdict."""
        client = scope.get("client")
        headers = scope.get("headers", ())
        wanted = self._wanted
        key = (client[0] if client else None, *(kv for kv in headers if kv[0].lower() in wanted))
        cache = self._clients
        if cache[0] is not view:
            cache = self._clients = (view, {})
        found = cache[1].get(key)
        if found is None:
            found = client_address(_peer(scope), headers, self.headers, view.is_trusted)
            if sum(len(v) for _, v in key[1:]) <= CACHED_HEADER_BYTES:  # bounded memory
                if len(cache[1]) >= CLIENT_CACHE:
                    cache[1].clear()
                cache[1][key] = found
        return found

    # --- threat reports -----------------------------------------------------------------------

    def _watching(self, client: IPAddress, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            start = message.get("type") == "http.response.start"
            if start and message.get("status") in REPORTED_STATUSES:
                self._failure(client)
            await send(message)

        return wrapped

    def _failure(self, client: IPAddress) -> None:
        now = self.clock()
        start, count = self._failures.pop(client, (now, 0))
        if now - start > self.report_window:
            start, count = now, 0
        count += 1
        if count >= self.report_threshold:
            self.reporter.report(
                {
                    "type": "HTTP_AUTH_FAILURES",
                    "source_ip": str(client),
                    "severity": "medium",
                    "detail": f"{count} answers 401/403 within {self.report_window:g} s",
                }
            )
            self.state.counters["reports_queued"] += 1
            start, count = now, 0
        self._failures[client] = (start, count)
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)


def _answer(status: int, error: str, rule: str | None = None) -> tuple[int, dict[str, Any], str]:
    request_id = secrets.token_hex(8)
    return status, {"error": error, "rule": rule, "request_id": request_id}, request_id


def _peer(scope: Scope) -> IPAddress:
    client = scope.get("client")
    if not client:
        return UNIX_PEER
    try:
        return parse_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return UNIX_PEER  # not an IP peer (a Unix socket path): local


def _server_port(scope: Scope) -> int:
    server = scope.get("server")
    if server and len(server) > 1 and isinstance(server[1], int) and 1 <= server[1] <= 65535:
        return server[1]
    return 443 if scope.get("scheme") in ("https", "wss") else 80


async def _refuse(scope: Scope, send: Send, status: int, body: dict[str, Any], rid: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": body["error"]})
        return
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", rid.encode()),
        (b"cache-control", b"no-store"),
    ]
    if status == 429:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
