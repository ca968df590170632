"""The ASGI middleware end to end: uvicorn serving a Starlette app with
`aitherfwd.asgi.FirewallMiddleware` in the server namespace, the real daemon beside it, real
httpx clients — behind a reverse proxy hop in client 2's namespace (the "edge": clients on
extra addresses there reach the proxy locally, the proxy reaches the app from 10.77.2.2 and
appends the client to X-Forwarded-For, so the kernel sees only the edge, as behind a tunnel),
and client 1 straight to the app (an untrusted peer)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import auditfiles
from lab.asgisite import Site
from lab.daemon import DaemonProc
from lab.network import Lab
from lab.wait import until

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

EDGE = "10.77.2.2"
ALICE, MALLORY, PARTNER, FLOODER = "10.77.2.10", "10.77.2.11", "10.77.2.12", "10.77.1.2"
OPEN_PORT, STRICT_PORT = 8000, 8001
POLICY = """\
version: 1
settings: {default_policy: deny}
zones:
  - {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}
  - {name: edge, cidrs: [10.77.2.2/32]}
  - {name: partners, cidrs: [10.77.2.12/32]}
  - {name: lab, cidrs: [10.77.0.0/16, "fd77::/16"]}
reputation: {threshold: 2}
rules:
  - {name: admin_needs_login, path_prefix: /admin, authenticated: false, action: deny}
  - {name: private_is_for_partners, zone: lab, path_prefix: /private, action: deny}
  - {name: web, dest_ports: [8000, 8001], protocol: tcp, action: allow}
"""
OPTIONS = {
    "trusted_proxies": ["edge"],
    "bypass_zones": ["loopback", "partners"],
    "report_threshold": 5,
}


@dataclass
class World:
    lab: Lab
    site: Site
    daemon: DaemonProc
    tmp: Path

    @property
    def edge_ns(self) -> str:
        return self.lab.clients[1].ns

    def via_proxy(self, source: str, *paths: str, **headers: str) -> list[tuple[int, Any]]:
        url = f"http://{EDGE}:8080"
        return self.site.fetch(self.edge_ns, source, [(url + p, headers) for p in paths])

    def direct(self, port: int, *paths: str, **headers: str) -> list[tuple[int, Any]]:
        url = f"http://{self.lab.clients[0].server_v4}:{port}"
        return self.site.fetch(self.lab.clients[0].ns, "", [(url + p, headers) for p in paths])

    def stats(self, port: int) -> dict[str, Any]:
        url = f"http://[::1]:{port}/stats"
        status, body = self.site.fetch(self.lab.server, "", [(url, {})])[0]
        assert status == 200 and isinstance(body, dict), body
        return body

    def audited(self, port: int, request_id: str) -> dict[str, Any] | None:
        """The middleware's audit line of the refusal `request_id`, once written."""
        path = self.tmp / ("open-audit.jsonl" if port == OPEN_PORT else "strict-audit.jsonl")
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return next((x for x in lines if x["request_id"] == request_id), None)

    def statuses(self, source: str, *paths: str, **headers: str) -> list[int]:
        return [s for s, _ in self.via_proxy(source, *paths, **headers)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with Lab(2) as lab, Site() as site:
        edge = lab.clients[1]
        for address in (ALICE, MALLORY, PARTNER):
            lab.add_address(edge, f"{address}/24")
        daemon = DaemonProc(lab.server, tmp_path, POLICY)
        try:
            options = {**OPTIONS, "socket": str(daemon.socket), "audit_per_source": 100}
            # each app's audit file: every line is checked against the schema (conftest.py)
            open_audit = str(auditfiles.register(tmp_path / "open-audit.jsonl"))
            strict_audit = str(auditfiles.register(tmp_path / "strict-audit.jsonl"))
            site.app(
                lab.server, OPEN_PORT, {**options, "audit_path": open_audit}, tmp_path / "open.log"
            )
            site.app(
                lab.server,
                STRICT_PORT,
                {**options, "fail_open": False, "audit_path": strict_audit},
                tmp_path / "strict.log",
            )
            site.proxy(edge.ns, EDGE, edge.server_v4, OPEN_PORT)
            yield World(lab, site, daemon, tmp_path)
        finally:
            daemon.cleanup()


def test_the_middleware_enforces_the_daemons_policy_behind_a_proxy(world: World) -> None:
    w = world
    # no daemon yet: the open app admits (fail open), the strict one answers 503
    first = w.via_proxy(MALLORY, "/private")
    assert [s for s, _ in first] == [200], first
    assert w.direct(STRICT_PORT, "/")[0][0] == 503
    w.daemon.start()
    until(lambda: w.statuses(MALLORY, "/private") == [403], 10, "live once the daemon runs")
    assert w.stats(OPEN_PORT)["live"] == 1

    # the client behind the trusted proxy is judged, by path and authentication
    assert w.statuses(ALICE, "/", "/private", "/admin") == [200, 403, 403]
    assert w.statuses(ALICE, "/admin", authorization="Bearer letmein") == [200]
    denied = w.via_proxy(ALICE, "/private")[0][1]
    assert set(denied) == {"error", "rule", "request_id"}
    assert denied["rule"] == "private_is_for_partners"
    # and is on the record: the client judged, behind the proxy that connected
    until(lambda: w.audited(OPEN_PORT, denied["request_id"]), 5, "the denial's line")
    line = w.audited(OPEN_PORT, denied["request_id"])
    assert line is not None
    assert (line["source_ip"], line["peer_ip"], line["zone"], line["rule_name"]) == (
        ALICE,
        EDGE,
        "lab",
        "private_is_for_partners",
    )
    assert (line["path"], line["status"], line["class_uid"]) == ("/private", 403, 4002)
    # a bypass zone is never judged
    assert w.statuses(PARTNER, "/private", "/admin") == [200, 200]
    # a forged X-Forwarded-For: the proxy appends the real client, which is judged
    assert w.statuses(ALICE, "/private", **{"x-forwarded-for": PARTNER}) == [403]
    # an untrusted peer's forwarding headers are ignored, and counted
    spoofed_before = w.stats(OPEN_PORT).get("spoofed", 0)
    forged = {"x-forwarded-for": PARTNER, "cf-connecting-ip": PARTNER}
    assert w.direct(OPEN_PORT, "/private", **forged)[0][0] == 403
    assert w.stats(OPEN_PORT)["spoofed"] == spoofed_before + 1

    # a daemon block is a 403 at once, though the kernel never sees this client
    poller = w.site.poller(w.edge_ns, ALICE, f"http://{EDGE}:8080/", 403)
    assert poller.stdout is not None
    assert json.loads(poller.stdout.readline()) == {"first": 200}
    w.daemon.ok("POST", "/v1/blocks", {"address": ALICE, "ttl": "10m"})
    answered = time.time()
    seen = json.loads(poller.stdout.readline())["at"]
    assert seen is not None, "the block never reached the middleware"
    # when the app applied it (its clock is ours); the client's 403 adds a request's time
    applied = w.stats(OPEN_PORT)["changed_at"] - answered
    print(
        f"block applied {applied * 1000:.1f} ms, a client's 403 {(seen - answered) * 1000:.1f} ms"
    )
    assert applied <= 0.1
    assert seen - answered <= 1.0
    assert w.via_proxy(ALICE, "/")[0][1]["rule"] is None
    w.daemon.ok("DELETE", f"/v1/blocks/{ALICE}")
    until(lambda: w.statuses(ALICE, "/") == [200], 5, "the unblock lifts it")

    # the daemon stops: the last policy and blocks still judge, allowed traffic is served
    w.daemon.ok("POST", "/v1/blocks", {"address": MALLORY})
    until(lambda: w.statuses(MALLORY, "/") == [403], 5, "Mallory blocked")
    w.daemon.stop(signal.SIGTERM)
    until(lambda: w.stats(OPEN_PORT)["live"] == 0, 10, "the middleware notices the loss")
    assert w.statuses(ALICE, "/", "/private") == [200, 403]
    assert w.statuses(MALLORY, "/") == [403]
    assert w.direct(STRICT_PORT, "/")[0][0] == 503
    assert w.stats(OPEN_PORT)["daemon_lost"] == 1
    # and it is live again when the daemon is back
    w.daemon.start()
    until(lambda: w.stats(OPEN_PORT)["live"] == 1, 10, "live again")
    assert w.direct(STRICT_PORT, "/")[0][0] == 200
    logged = (w.tmp / "open.log").read_text()
    assert logged.count("daemon unreachable, judging with the last policy") == 1


def test_a_401_flood_from_one_client_ends_in_a_kernel_block(world: World) -> None:
    w = world
    w.daemon.start()
    until(lambda: w.stats(OPEN_PORT)["live"] == 1, 10, "live")
    # 2 reports of 5 answers 401 each reach the policy's threshold of 2 threat events
    answers = w.direct(OPEN_PORT, *["/login"] * 10)
    assert [s for s, _ in answers] == [401] * 10

    def blocked() -> bool:
        return any(b["address"] == FLOODER for b in w.daemon.ok("GET", "/v1/blocks")["blocks"])

    until(blocked, 10, "the flooder blocked by the reputation ladder")
    # the kernel drops the flooder now: its connections time out
    probe = w.lab.probe(w.lab.clients[0], w.lab.clients[0].server_v4, OPEN_PORT, timeout=0.5)
    assert probe == ["timeout"]
    escalations = [e for e in w.daemon.audit_events() if e["event"] == "escalation_temporary"]
    assert [(e["source_ip"], e["threat"]) for e in escalations] == [(FLOODER, "HTTP_AUTH_FAILURES")]
