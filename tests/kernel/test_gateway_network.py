"""The network follows the tool call, with real packets: the daemon firewalls the agent's
namespace (egress default reject), the gateway runs beside it and asks it for a sandbox
grant when it allows a `web.fetch`; the agent then reaches exactly that host and port for
the call's TTL, and nothing else. A denied call opens nothing; a known_bad host is denied."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aitherfwd.client import SandboxClient
from lab.daemon import DaemonProc
from lab.gateway import GatewayProc
from lab.netns import inside, must
from lab.network import Client, Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

PORT, OTHER_PORT = 8080, 9090
TARGET, OTHER, BAD = "10.77.1.30", "10.77.1.31", "10.77.1.66"
TARGET6 = "fd77:0:0:1::30"

POLICY = f"""\
version: 1
settings: {{default_policy: allow}}
egress:
  default_action: reject
  resolvers: [10.77.1.1]
  known_bad: [{BAD}]
sandbox:
  max_ttl: 1h
  default_ttl: 10m
  allowed_ports: [{PORT}, {OTHER_PORT}]
"""
CONFIG = '[control]\nmode = "0666"\n'
TOOLS = f"""\
version: 1
tools:
  default: deny
  allow:
    - name: web.fetch
      network: {{param: url, ports: [{PORT}], ttl: 3s}}
  deny:
    - name: shell.exec
"""


@dataclass
class Env:
    lab: Lab
    client: Client
    daemon: DaemonProc
    gateway: GatewayProc

    def tcp(self, addr: str, port: int = PORT) -> str:
        return self.lab.tcp(self.client, addr, port, timeout=1.0)

    def evaluate(self, body: dict[str, object]) -> dict[str, object]:
        """POST /v1/evaluate from inside the agent's namespace, as agent-alice."""
        request = urllib.request.Request(  # noqa: S310  (a loopback URL we built)
            self.gateway.url + "/v1/evaluate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer alice-tok"},
        )
        with inside(self.client.ns), urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            result: dict[str, object] = json.loads(answer.read())
            return result

    def grants(self) -> list[dict[str, object]]:
        return SandboxClient(self.daemon.socket, timeout=30).grants()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gwnet")
    with Lab(clients_wanted=1) as lab:
        client = lab.clients[0]
        for addr in (TARGET, OTHER, BAD):
            must(["ip", "-n", lab.server, "addr", "add", f"{addr}/24", "dev", client.server_dev])
        six = [f"{TARGET6}/64", "dev", client.server_dev, "nodad"]
        must(["ip", "-n", lab.server, "addr", "add", *six])
        lab.listen([PORT, OTHER_PORT])
        agents = tmp / "agents"
        agents.mkdir()
        (agents / "agent-alice").write_text("alice-tok\n")
        daemon = DaemonProc(client.ns, tmp, POLICY, CONFIG)
        try:
            daemon.start()
            env = {"AGENT_TOKENS_DIR": str(agents), "AITHERFWD_SOCKET": str(daemon.socket)}
            with GatewayProc(tmp, TOOLS, ns=client.ns, env=env) as gateway:
                yield Env(lab, client, daemon, gateway)
        finally:
            daemon.cleanup()


def test_an_allowed_fetch_opens_exactly_its_destination_for_its_ttl(env: Env) -> None:
    assert env.tcp(TARGET) == "refused" and env.tcp(OTHER) == "refused"
    answer = env.evaluate({"tool": "web.fetch", "params": {"url": f"http://{TARGET}:{PORT}/x"}})
    assert answer == {"allowed": True, "network": {"host": TARGET, "port": PORT, "ttl": 3}}
    # answered only once the grant is in the kernel: no waiting here
    assert env.tcp(TARGET) == "ok"
    assert env.tcp(TARGET, OTHER_PORT) == "refused"  # only the call's port
    assert env.tcp(OTHER) == "refused"  # only the call's host
    grants = [g for g in env.grants() if g["destination"] == TARGET]
    assert grants and grants[0]["scope"] == "agent-alice" and grants[0]["ports"] == [PORT]
    until(lambda: env.tcp(TARGET) == "refused", 15, "the grant to expire in the kernel")
    audit = [x for x in env.gateway.audit_lines() if x["tool"] == "web.fetch"]
    assert audit[0]["agent"] == "agent-alice" and audit[0]["destination"] == f"{TARGET}:{PORT}"


def test_an_allowed_fetch_to_an_ipv6_literal_opens_it(env: Env) -> None:
    assert env.tcp(TARGET6) == "refused"
    answer = env.evaluate({"tool": "web.fetch", "params": {"url": f"http://[{TARGET6}]:{PORT}/"}})
    assert answer["allowed"] is True
    assert env.tcp(TARGET6) == "ok"


def test_a_denied_call_opens_nothing(env: Env) -> None:
    before = {g["destination"] for g in env.grants()}
    denied = [
        {"tool": "shell.exec", "params": {"url": f"http://{OTHER}:{PORT}/"}},
        {"tool": "web.fetch", "params": {"url": f"http://{OTHER}:{OTHER_PORT}/"}},  # port
        {"tool": "web.fetch", "params": {"url": f"http://user:pw@{OTHER}:{PORT}/"}},
        {"tool": "WEB.FETCH2", "params": {"url": f"http://{OTHER}:{PORT}/"}},
    ]
    for body in denied:
        assert env.evaluate(body)["allowed"] is False, body
    assert {g["destination"] for g in env.grants()} == before
    assert env.tcp(OTHER) == "refused" and env.tcp(OTHER, OTHER_PORT) == "refused"


def test_a_known_bad_host_denies_the_call(env: Env) -> None:
    answer = env.evaluate({"tool": "web.fetch", "params": {"url": f"http://{BAD}:{PORT}/"}})
    assert answer["allowed"] is False
    assert str(answer["reason"]).startswith("network grant refused: E-GRANT-REFUSED")
    assert env.tcp(BAD) != "ok"


def test_without_the_daemon_the_gateway_fails_closed(tmp_path: Path, env: Env) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "agent-alice").write_text("alice-tok\n")
    env_vars = {"AGENT_TOKENS_DIR": str(agents), "AITHERFWD_SOCKET": str(tmp_path / "none.sock")}
    with GatewayProc(tmp_path, TOOLS, ns=env.client.ns, env=env_vars) as gw:
        other = Env(env.lab, env.client, env.daemon, gw)
        answer = other.evaluate({"tool": "web.fetch", "params": {"url": f"http://{OTHER}:{PORT}/"}})
        assert answer["allowed"] is False and "network grant refused" in str(answer["reason"])
    assert env.tcp(OTHER) == "refused"


def test_an_unprivileged_user_can_ask_but_not_reload_nor_read_the_audit(env: Env) -> None:
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]
    reload = env.lab.exec(env.client.ns, [*nobody, *curl, env.gateway.url + "/v1/reload"])
    assert reload.stdout == "403"
    ask = [*curl, "-H", "Authorization: Bearer alice-tok", "-d", '{"tool": "shell.exec"}']
    asked = env.lab.exec(env.client.ns, [*nobody, *ask, env.gateway.url + "/v1/evaluate"])
    assert asked.stdout == "200"
    read = env.lab.exec(env.client.ns, [*nobody, "cat", str(env.gateway.audit)])
    assert read.returncode != 0 and (env.gateway.audit.stat().st_mode & 0o077) == 0
