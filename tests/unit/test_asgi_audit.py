"""The middleware's decisions in its audit file, with a real uvicorn serving it and real httpx
clients behind a trusted proxy hop (X-Forwarded-For from loopback), following a daemon's API
on fakes: a denied request is exactly one OCSF HTTP Activity line naming the client judged,
allows are recorded only when asked, and a flood of 10,000 denied requests writes a bounded
number of lines whose counts add up to every request — without hiding another client's
denial."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from aitherfwd import __version__
from aitherfwd import audit_ocsf as ocsf
from aitherfwd.asgi import FirewallMiddleware
from lab import auditfiles
from lab.wait import until
from tests.unit.asgi_harness import Served, served
from tests.unit.test_asgi_middleware import POLICY, application

pytestmark = pytest.mark.timeout(180)

FLOOD = 10_000
FLOODER, OTHER, CLIENT = "198.51.100.9", "198.51.100.10", "198.51.100.7"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path, POLICY) as d:
        yield d


@contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """`app` under a real uvicorn (h11, asyncio, lifespan on) on a free loopback port, in a
    thread; stopped (lifespan shutdown included) on the way out."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        app,
        lifespan="on",
        http="h11",
        loop="asyncio",
        proxy_headers=False,  # as docs/middleware.md says: the middleware judges the header
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started, 10, "uvicorn serves")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def audited(daemon: Served, path: Path, **options: Any) -> FirewallMiddleware:
    return FirewallMiddleware(
        application(),
        socket=daemon.socket,
        trusted_proxies=["127.0.0.1"],
        port=8000,
        audit_path=auditfiles.register(path),
        clock=time.time,
        **options,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_denied_request_is_exactly_one_http_activity_line(daemon: Served, tmp_path: Path) -> None:
    path = tmp_path / "app-audit.jsonl"
    mw = audited(daemon, path)
    with uvicorn_serving(mw) as url:
        until(lambda: mw.state.live, 5, "the middleware follows the daemon")
        with httpx.Client(base_url=url) as c:
            assert c.get("/", headers={"X-Forwarded-For": CLIENT}).status_code == 200
            denied = c.get("/private/x?q=1", headers={"X-Forwarded-For": CLIENT})
        assert denied.status_code == 403
        until(lambda: len(lines(path)) >= 1, 5, "the line is written")
    (line,) = lines(path)  # the allowed request is not recorded (log_allowed is off)
    assert line["latency_us"] > 0 and line["time"] == ocsf.epoch_ms(line["timestamp"])
    expected = {
        "timestamp": line["timestamp"],
        "event": "decision",
        "action": "denied",
        "verdict": "deny",
        "rule_name": "no_private_outside",
        "zone": "external",
        "source_ip": CLIENT,
        "dest_service": None,
        "reason": line["reason"],
        "latency_us": line["latency_us"],
        "dest_ip": "127.0.0.1",
        "dest_port": 8000,
        "method": "GET",
        "path": "/private/x",
        "status": 403,
        "request_id": denied.headers["x-request-id"],
        "peer_ip": "127.0.0.1",
        "kind": "http",
        "origin": "middleware",
        "count": 1,
        "class_uid": 4002,
        "class_name": "HTTP Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": 3,
        "activity_name": "Get",
        "type_uid": 400203,
        "severity_id": 2,
        "time": line["time"],
        "metadata": {
            "product": {"name": "aitherfwd", "vendor_name": "aitherfwd", "version": __version__},
            "version": "1.1.0",
        },
        "action_id": 2,
        "disposition": "Blocked",
        "disposition_id": 2,
        "src_endpoint": {"ip": CLIENT},
        "dst_endpoint": {"ip": "127.0.0.1", "port": 8000},
        "http_request": {"http_method": "GET", "url": {"path": "/private/x"}},
        "http_response": {"code": 403},
    }
    assert line == expected and list(line) == list(expected)
    assert "no_private_outside" in line["reason"]


def test_allows_are_recorded_when_asked(daemon: Served, tmp_path: Path) -> None:
    path = tmp_path / "app-audit.jsonl"
    mw = audited(daemon, path, audit_allowed=True)
    with uvicorn_serving(mw) as url:
        until(lambda: mw.state.live, 5, "the middleware follows the daemon")
        answer = httpx.post(f"{url}/", headers={"X-Forwarded-For": "10.9.9.9"})
        assert answer.status_code == 405  # the app's answer: the middleware let it through
        until(lambda: len(lines(path)) == 1, 5, "the line is written")
    (line,) = lines(path)
    assert (line["action"], line["verdict"], line["rule_name"], line["zone"]) == (
        "allowed",
        "allow",
        "web",
        "internal",
    )
    assert (line["status"], line["request_id"], line["activity_name"]) == (None, None, "Post")
    assert line["http_response"] == {} and line["disposition"] == "Allowed"


def _flood(url: str, count: int, source: str, workdir: Path) -> list[int]:
    """`count` GETs of /private from `source` (behind the proxy), 16 at a time, by curl in
    its own process (a client in this process would share the GIL with the server)."""
    config = workdir / "flood.curl"
    config.write_text(f'url = "{url}/private"\noutput = "/dev/null"\n' * count)
    out = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "--parallel", "--parallel-max", "16", "-K", str(config),
         "-H", f"X-Forwarded-For: {source}", "-w", "%{http_code}\\n"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [int(x) for x in out.stdout.split()]


def test_a_flood_of_denied_requests_writes_a_bounded_number_of_lines_that_count_them_all(
    daemon: Served, tmp_path: Path
) -> None:
    path = tmp_path / "app-audit.jsonl"
    mw = audited(daemon, path, audit_interval=1.0)
    with uvicorn_serving(mw) as url:
        until(lambda: mw.state.live, 5, "the middleware follows the daemon")
        started = time.monotonic()
        statuses = _flood(url, FLOOD, FLOODER, tmp_path)
        elapsed = time.monotonic() - started
        assert statuses == [403] * FLOOD
        # another client denied right after the flood still gets its own line at once
        assert httpx.get(f"{url}/private", headers={"X-Forwarded-For": OTHER}).status_code == 403
        until(lambda: any(x["source_ip"] == OTHER for x in lines(path)), 5, "the other's line")
        stats = mw.stats()
    # the server stopped: the lifespan shutdown wrote the last aggregated line
    flood = [x for x in lines(path) if x["source_ip"] == FLOODER]
    assert sum(x["count"] for x in flood) == FLOOD
    # one line a second for the client (its bucket) and one aggregate a second, plus the
    # first line, the last aggregate, and a second of slack each way
    bound = 2 * (elapsed + 2) + 2
    assert 2 <= len(flood) <= bound, (len(flood), elapsed)
    assert all(x["rule_name"] == "no_private_outside" and x["status"] == 403 for x in flood)
    assert max(x["count"] for x in flood) > 1  # aggregated lines stand for many
    assert stats["audit_dropped"] == 0 and stats["audit_left_out"] >= FLOOD - len(flood)
    print(f"{FLOOD} denied requests in {elapsed:.1f} s: {len(flood)} lines")


def test_without_an_audit_path_nothing_is_written_and_no_thread_starts(
    daemon: Served, tmp_path: Path
) -> None:
    mw = FirewallMiddleware(application(), socket=daemon.socket, clock=time.time)
    assert mw.audit is None and "audit_lines" not in mw.stats()
    threads = {t.name for t in threading.enumerate()}
    assert "aitherfwd-audit" not in threads


def test_hostile_requests_are_recorded_bounded_and_on_one_line(
    daemon: Served, tmp_path: Path
) -> None:
    """A malformed forwarding header from the trusted proxy is a 400 on the record with the
    peer as source; a huge path with control characters is cut and escaped."""
    path = tmp_path / "app-audit.jsonl"
    mw = audited(daemon, path)
    with uvicorn_serving(mw) as url:
        until(lambda: mw.state.live, 5, "the middleware follows the daemon")
        with httpx.Client(base_url=url) as c:
            bad = c.get("/", headers={"X-Forwarded-For": "not-an-address"})
            huge = c.get("/private/" + "%0a%e2%80%a8" * 2000, headers={"X-Forwarded-For": CLIENT})
        assert (bad.status_code, huge.status_code) == (400, 403)
        until(lambda: len(lines(path)) == 2, 5, "both lines")
    raw = path.read_text().splitlines()
    assert len(raw) == 2 and all(x.isascii() for x in raw)
    malformed, long = (json.loads(x) for x in raw)
    assert (malformed["verdict"], malformed["rule_name"], malformed["status"]) == (
        "deny",
        None,
        400,
    )
    assert malformed["source_ip"] == malformed["peer_ip"] == "127.0.0.1"
    assert "malformed forwarding header" in malformed["reason"]
    assert len(long["path"]) == 256 and "\n" in long["path"] and long["count"] == 1
