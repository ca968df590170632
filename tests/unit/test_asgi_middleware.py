"""`FirewallMiddleware` in a Starlette application, following the daemon's API on fakes over a
real control socket (httpx's ASGI transport sets the peer address): denials and their body,
path and authentication rules, bypass zones, trusted proxies and spoofing, a daemon block
refused at once, fail-open and fail-static, 503 with fail_open=False, a 401 flood reported up
the reputation ladder to a block, and the verdict's parity with `/v1/evaluate`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from aitherfwd.asgi import FirewallMiddleware
from aitherfwd.asgi.view import judge
from lab.wait import until
from tests.unit.asgi_harness import Served, served
from tests.unit.policy_strategies import policies, to_yaml

pytestmark = pytest.mark.timeout(120)

POLICY = """
version: 1
settings: {default_policy: deny}
zones:
  - {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}
  - {name: docker, cidrs: [172.17.0.0/16]}
  - {name: proxies, cidrs: [10.77.0.0/29]}
  - {name: internal, cidrs: [10.0.0.0/8]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
reputation: {threshold: 3}
rules:
  - {name: admin_needs_login, path_prefix: /admin, authenticated: false, action: deny}
  - {name: no_private_outside, zone: external, path_prefix: /private, action: deny}
  - {name: web, dest_ports: [8000], protocol: tcp, action: allow}
"""


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def login(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=401)


def application() -> Starlette:
    paths = ["/", "/admin", "/private", "/login"]
    return Starlette(
        routes=[Route(p, login if p == "/login" else hello) for p in paths],
    )


def is_logged_in(scope: Any) -> bool:
    return dict(scope.get("headers", ())).get(b"authorization") == b"Bearer ok"


def get(mw: FirewallMiddleware, path: str, peer: str, **headers: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=mw, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.get(path, headers=headers)

    return asyncio.run(go())


@contextmanager
def middleware(d: Served | Path, **options: Any) -> Iterator[FirewallMiddleware]:
    sock = d.socket if isinstance(d, Served) else d
    clock = d.fake.clock.now if isinstance(d, Served) else time.time
    options = {
        "trusted_proxies": ["proxies"],
        "authenticated": is_logged_in,
        "port": 8000,
        "clock": clock,
        **options,
    }
    mw = FirewallMiddleware(application(), socket=sock, **options)
    mw.start()
    try:
        if isinstance(d, Served):
            until(lambda: mw.state.live, 5, "the middleware follows the daemon")
        yield mw
    finally:
        mw.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path, POLICY) as d:
        yield d


def test_allowed_requests_reach_the_application(daemon: Served) -> None:
    with middleware(daemon) as mw:
        answer = get(mw, "/", "203.0.113.7")
    assert (answer.status_code, answer.text) == (200, "hello")


def test_a_denial_is_a_403_naming_the_rule_and_a_request_id_only(daemon: Served) -> None:
    with middleware(daemon) as mw:
        answer = get(mw, "/private/x", "203.0.113.7")
    assert answer.status_code == 403
    body = answer.json()
    assert set(body) == {"error", "rule", "request_id"}
    assert body["rule"] == "no_private_outside" and body["error"] == "forbidden"
    assert answer.headers["x-request-id"] == body["request_id"] and len(body["request_id"]) == 16


def test_path_prefix_rules_follow_the_zone(daemon: Served) -> None:
    with middleware(daemon) as mw:
        assert get(mw, "/private", "10.9.9.9").status_code == 200  # internal
        assert get(mw, "/private", "2001:db8::7").status_code == 403


def test_authenticated_rules_ask_the_callable(daemon: Served) -> None:
    with middleware(daemon) as mw:
        assert get(mw, "/admin", "203.0.113.7").json()["rule"] == "admin_needs_login"
        assert get(mw, "/admin", "203.0.113.7", authorization="Bearer ok").status_code == 200
    with middleware(daemon, authenticated=None) as mw:  # no callable: nobody is logged in
        assert get(mw, "/admin", "203.0.113.7", authorization="Bearer ok").status_code == 403


def test_bypass_zones_are_never_judged(daemon: Served) -> None:
    with middleware(daemon) as mw:
        assert get(mw, "/admin", "172.17.0.9").status_code == 200
        assert mw.stats()["bypassed"] == 1
    with middleware(daemon, bypass_zones=()) as mw:
        assert get(mw, "/admin", "172.17.0.9").status_code == 403


def test_the_client_behind_a_trusted_proxy_is_judged(daemon: Served) -> None:
    with middleware(daemon) as mw:
        xff = {"x-forwarded-for": "10.9.9.9, 203.0.113.7"}  # the left entry is forged
        assert get(mw, "/private", "10.77.0.2", **xff).status_code == 403
        assert get(mw, "/private", "10.77.0.2").status_code == 200  # the proxy itself


def test_forwarding_headers_from_untrusted_peers_are_ignored_and_counted(
    daemon: Served,
) -> None:
    with middleware(daemon) as mw:
        spoof = {"x-forwarded-for": "10.9.9.9", "cf-connecting-ip": "172.17.0.9"}
        assert get(mw, "/private", "203.0.113.7", **spoof).status_code == 403
        assert mw.stats()["spoofed"] == 1


def test_a_malformed_forwarding_header_from_a_trusted_proxy_is_a_400(daemon: Served) -> None:
    with middleware(daemon) as mw:
        answer = get(mw, "/", "10.77.0.2", **{"x-forwarded-for": "203.0.113.7, junk, 10.77.0.3"})
        assert answer.status_code == 400 and answer.json()["error"] == "malformed forwarding header"
        assert mw.stats()["malformed"] == 1


def test_a_daemon_block_is_refused_within_100_ms_and_an_unblock_lifts_it(daemon: Served) -> None:
    with middleware(daemon) as mw:
        assert get(mw, "/", "203.0.113.7").status_code == 200
        started = time.monotonic()
        daemon.block("203.0.113.0/24", ttl=600)
        until(lambda: get(mw, "/", "203.0.113.7").status_code == 403, 2, "blocked")
        assert time.monotonic() - started < 0.1 * 5  # 100 ms, with room for a loaded machine
        answer = get(mw, "/", "203.0.113.7")
        assert answer.json()["rule"] is None  # a block names no rule and no reason
        daemon.unblock("203.0.113.0/24")
        until(lambda: get(mw, "/", "203.0.113.7").status_code == 200, 2, "unblocked")


def test_with_no_daemon_ever_it_fails_open_or_answers_503(tmp_path: Path) -> None:
    with middleware(tmp_path / "absent.sock") as mw:
        assert get(mw, "/private", "203.0.113.7").status_code == 200
        assert mw.stats()["fail_open_admitted"] == 1
    with middleware(tmp_path / "absent.sock", fail_open=False) as mw:
        answer = get(mw, "/", "203.0.113.7")
        assert answer.status_code == 503 and "request_id" in answer.json()


def test_a_daemon_that_comes_later_makes_it_live(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with middleware(sock) as mw:
        assert get(mw, "/private", "203.0.113.7").status_code == 200  # fail open
        with served(tmp_path, POLICY):
            until(lambda: mw.state.live, 10, "live once the daemon is there")
            assert get(mw, "/private", "203.0.113.7").status_code == 403


def test_a_lost_daemon_leaves_the_last_policy_and_blocks_enforced(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(served(tmp_path, POLICY))
        mw = stack.enter_context(middleware(d))
        strict = stack.enter_context(middleware(d, fail_open=False))
        d.block("198.51.100.7")
        until(lambda: mw.state.blocks() == strict.state.blocks() == 1, 5, "block seen")
        stack.pop_all()  # the middlewares outlive the daemon
    try:
        until(lambda: not mw.state.live and not strict.state.live, 5, "loss noticed")
        assert get(mw, "/private", "203.0.113.7").status_code == 403
        assert get(mw, "/", "198.51.100.7").status_code == 403
        assert get(mw, "/", "203.0.113.7").status_code == 200
        assert get(strict, "/", "203.0.113.7").status_code == 503
        assert mw.stats()["daemon_lost"] == 1
    finally:
        mw.close()
        strict.close()


def test_a_401_flood_climbs_the_ladder_to_a_block(daemon: Served) -> None:
    with middleware(daemon, report_threshold=5) as mw:
        for _ in range(15):  # 3 reports: the policy's reputation threshold
            assert get(mw, "/login", "198.51.100.23").status_code == 401
        until(lambda: mw.stats().get("reports_sent", 0) == 3, 5, "three reports")
        until(lambda: get(mw, "/", "198.51.100.23").status_code == 403, 5, "blocked")
    events = [e for e in daemon.fake.audit_events() if e.get("event") == "blocked"]
    assert events and events[-1]["source_ip"] == "198.51.100.23"


def test_lifespan_starts_and_stops_the_follower(daemon: Served) -> None:
    mw = FirewallMiddleware(application(), socket=daemon.socket, port=8000)

    async def go() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[Any] = []

        async def receive() -> Any:
            return next(messages)

        async def send(message: Any) -> None:
            sent.append(message)

        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]

    asyncio.run(go())
    assert mw.follower._stop.is_set()


def test_the_middleware_needs_no_web_framework() -> None:
    frameworks = "('starlette', 'fastapi', 'httpx', 'uvicorn', 'anyio')"
    code = (
        "import sys, aitherfwd.asgi; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {frameworks}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@st.composite
def parity_requests(draw: st.DrawFn, policy: Any) -> tuple[str, int, str, bool]:
    nets = [c for z in policy.zones for c in z.cidrs] + [
        c for r in policy.rules for c in r.source_cidrs
    ]
    source = draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
    if nets and draw(st.booleans()):
        net = draw(st.sampled_from(nets))
        source = net.network_address + draw(st.integers(0, net.num_addresses - 1))
    ports = [pr.lo for r in policy.rules for pm in r.ports for pr in pm.ranges] or [8000]
    port = draw(st.one_of(st.sampled_from(ports), st.integers(1, 65535)))
    prefixes = [r.path_prefix + "x" for r in policy.rules if r.path_prefix] or ["/"]
    path = draw(st.sampled_from([*prefixes, "/"]))
    return str(source), port, path, draw(st.booleans())


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_the_verdict_is_the_daemons_evaluate_on_random_policies(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    text = to_yaml(data.draw(policies(with_egress=False)))
    with served(tmp_path_factory.mktemp("parity"), text) as d:
        with middleware(d, bypass_zones=(), trusted_proxies=()) as mw:
            view = mw.state.view
        assert view is not None
        for _ in range(25):
            source, port, path, auth = data.draw(parity_requests(view.policy))
            address = ipaddress.ip_address(source)
            mine = judge(view, address, port, path, auth, d.fake.clock.now(), None, None)
            theirs = d.evaluate(
                {
                    "source_ip": source,
                    "dest_port": port,
                    "protocol": "tcp",
                    "path": path,
                    "authenticated": auth,
                }
            )
            if theirs["verdict"] == "rate_limited":  # the daemon's buckets were used before
                assert mine.rule == theirs["rule"]
                continue
            assert (mine.verdict, mine.rule) == (theirs["verdict"], theirs["rule"]), text


@pytest.mark.parametrize("status", [200, 401, 403])
def test_only_answers_401_and_403_count_toward_a_report(daemon: Served, status: int) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({}, status_code=status)(scope, receive, send)

    mw = FirewallMiddleware(
        app, socket=daemon.socket, port=8000, report_threshold=2, clock=daemon.fake.clock.now
    )
    mw.start()
    try:
        until(lambda: mw.state.live, 5, "live")
        get(mw, "/", "198.51.100.50")
        get(mw, "/", "198.51.100.50")
        assert mw.stats().get("reports_queued", 0) == (1 if status != 200 else 0)
    finally:
        mw.close()


def test_the_same_forwarding_header_from_another_peer_is_judged_anew(daemon: Served) -> None:
    with middleware(daemon) as mw:
        xff = {"x-forwarded-for": "10.9.9.9"}  # internal: /private allowed if believed
        for _ in range(2):  # the second round is answered from the remembered clients
            assert get(mw, "/private", "10.77.0.2", **xff).status_code == 200
            assert get(mw, "/private", "203.0.113.7", **xff).status_code == 403
        assert mw.stats()["spoofed"] == 2


def test_a_denied_websocket_is_closed_with_policy_violation(daemon: Served) -> None:
    with middleware(daemon) as mw:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/private/socket",
            "headers": [],
            "client": ("203.0.113.7", 5000),
            "server": ("10.0.0.1", 8000),
        }
        asyncio.run(mw(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "forbidden"}]


def test_the_middlewares_counters_and_liveness_are_prometheus_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    from aitherfwd.adapters.asgi_metrics import register_middleware  # noqa: PLC0415

    def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("kind", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    sock = tmp_path / "control.sock"
    with middleware(sock) as mw:
        registry = CollectorRegistry()
        register_middleware(mw, registry)
        get(mw, "/private", "203.0.113.7")  # no daemon yet: fails open, not live
        lost = scrape(registry)
        assert lost[("aitherfwd_middleware_live", "")] == 0
        assert lost[("aitherfwd_middleware_events_total", "fail_open_admitted")] == 1
        with served(tmp_path, POLICY):
            until(lambda: mw.state.live, 10, "live once the daemon is there")
            get(mw, "/private", "203.0.113.7")
            live = scrape(registry)
        assert live[("aitherfwd_middleware_live", "")] == 1
        assert live[("aitherfwd_middleware_generation", "")] >= 1
        assert live[("aitherfwd_middleware_events_total", "denied")] >= 1


def test_a_country_or_list_rule_never_matches_where_the_country_is_unknown() -> None:
    from aitherfwd.control import policyview  # noqa: PLC0415
    from aitherfwd.evaluator import Evaluator, Request  # noqa: PLC0415
    from aitherfwd.policy.model import Protocol  # noqa: PLC0415
    from aitherfwd.policy.parse import parse_policy  # noqa: PLC0415

    text = (
        "version: 1\n"
        "geoip: {database: /nonexistent.mmdb}\n"
        "lists: [{name: partners, path: /nonexistent.txt}]\n"
        "settings: {default_policy: deny}\n"
        "rules:\n"
        "  - {name: fr_admin, action: allow, source_countries: [FR], path_prefix: /admin}\n"
        "  - {name: partner_api, action: allow, source_lists: [partners], path_prefix: /api}\n"
    )
    policy = parse_policy(text, "policy.yaml").policy
    assert policy is not None
    view = policyview.decode(policyview.encode(policy))
    ev = Evaluator(view)
    for path in ("/admin/x", "/api/y"):
        req = Request(ipaddress.ip_address("203.0.113.7"), Protocol.TCP, 8000, path=path)
        assert ev.evaluate(req, 0.0).verdict == "deny", path
