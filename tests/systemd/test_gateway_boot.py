"""The tool-call gateway as the .deb ships it, in a booted systemd (tests/systemd/container.py):
`aitherfwd-gateway.socket` activates the hardened service on the first connection (dynamic
user, no network of its own, Debian's Starlette and uvicorn), seed 003's examples answer as
documented, and an allowed `web.fetch` opens its destination through the packaged daemon's
sandbox grant — the socket's group carrying the `sandbox` role — with real packets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import netns
from lab.netns import inside
from lab.network import LISTENER, PROBE, Lab
from tests.systemd.container import Container
from tests.systemd.test_boot import built_deb, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]

GATEWAY = "http://127.0.0.1:8475"
PORT = 8080
SEED_TOOLS = """\
version: 1
tools:
  default: "deny"
  rate_limit:
    requests_per_minute: 120
  allow:
    - name: "filesystem.read"
      paths_allowlist:
        - "/home/user/documents/**"
      paths_denylist:
        - "/etc/shadow"
        - "/etc/passwd"
      max_arg_length: 4096
    - name: "web.search"
      args_blocklist:
        - "password"
        - "secret"
    - name: "web.fetch"
      network: {param: url, ports: [8080], ttl: 30s}
  deny:
    - name: "shell.exec"
    - name: "process.spawn"
"""
FIREWALL = """\
version: 1
settings: {default_policy: allow}
egress:
  default_action: reject
  resolvers: [127.0.0.53]
sandbox: {max_ttl: 1h, default_ttl: 10m, allowed_ports: [8080]}
"""


@dataclass
class Box:
    lab: Lab
    ct: Container

    def evaluate(self, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(  # noqa: S310  (loopback in the container's netns)
            GATEWAY + "/v1/evaluate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with inside(self.lab.server), urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            result: dict[str, object] = json.loads(answer.read())
            return result

    def tcp_out(self, addr: str, port: int) -> str:
        """A connection from the container (the firewalled host) to the client side."""
        argv = [sys.executable, "-c", PROBE, "tcp", addr, str(port), "1", "1.0", ""]
        res = self.lab.exec(self.lab.server, argv)
        return str(json.loads(res.stdout)[0])


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    deb = built_deb()
    with Lab(clients_wanted=1) as lab:
        client = lab.clients[0]
        listener = subprocess.Popen(
            netns.exec_argv(client.ns, [sys.executable, "-c", LISTENER, str(PORT), "", ""]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
            with Container(lab.server, deb) as ct:
                yield Box(lab, ct)
        finally:
            listener.kill()
            listener.wait(10)


def test_the_gateway_units_are_shipped_and_nothing_is_enabled(box: Box) -> None:
    socket = box.ct.sh("systemctl", "is-enabled", "aitherfwd-gateway.socket").stdout.strip()
    assert socket == "disabled"
    # the service has no install section of its own, only Also= its socket
    service = box.ct.sh("systemctl", "is-enabled", "aitherfwd-gateway.service").stdout.strip()
    assert service == "indirect"
    assert box.ct.prop("ActiveState", "aitherfwd-gateway.socket") == "inactive"
    conffiles = box.ct.ok("dpkg-query", "-W", "-f", "${Conffiles}", "aitherfwd")
    assert "/etc/aitherfwd/gateway.yaml" in conffiles
    assert "valid tool policy" in box.ct.ok("aitherfwd", "check", "/etc/aitherfwd/gateway.yaml")


def test_the_socket_activates_the_service_and_the_seed_examples_answer(box: Box) -> None:
    box.ct.write("/etc/aitherfwd/gateway.yaml", SEED_TOOLS)
    box.ct.ok("systemctl", "start", "aitherfwd-gateway.socket")
    assert box.ct.prop("ActiveState", "aitherfwd-gateway.service") == "inactive"
    read = {"tool": "filesystem.read", "params": {"path": "/home/user/documents/notes.txt"}}
    assert box.evaluate(read) == {"allowed": True}
    shell = {"tool": "shell.exec", "params": {"cmd": "rm -rf /"}}
    assert box.evaluate(shell) == {"allowed": False, "reason": "tool is explicitly denied"}
    unit = "aitherfwd-gateway.service"
    assert box.ct.prop("ActiveState", unit) == "active"
    assert box.ct.prop("DynamicUser", unit) == "yes"
    assert box.ct.prop("PrivateNetwork", unit) == "yes"
    audit = box.ct.ok("cat", "/var/log/aitherfwd-gateway/audit.jsonl").splitlines()
    assert json.loads(audit[-1])["tool"] == "shell.exec"


def test_reload_needs_the_token_the_service_reads_through_its_group(box: Box) -> None:
    def reload(token: str) -> int:
        request = urllib.request.Request(  # noqa: S310
            GATEWAY + "/v1/reload", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with inside(box.lab.server), urllib.request.urlopen(request, timeout=30) as a:  # noqa: S310
                return int(a.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert reload("anything") == 403  # no token file: reload over HTTP is off
    box.ct.write("/etc/aitherfwd/gateway-token", "t0ken\n")
    box.ct.ok("chown", "root:aitherfwd", "/etc/aitherfwd/gateway-token")
    box.ct.ok("chmod", "0640", "/etc/aitherfwd/gateway-token")
    box.ct.ok("systemctl", "restart", "aitherfwd-gateway.service")
    assert reload("wrong") == 403
    assert reload("t0ken") == 200


def test_the_gateway_unit_scores_at_most_1_5_in_the_booted_system(box: Box) -> None:
    out = box.ct.ok("systemd-analyze", "security", "--no-pager", "aitherfwd-gateway.service")
    match = re.search(r"Overall exposure level for aitherfwd-gateway.service: ([0-9.]+)", out)
    assert match and float(match.group(1)) <= 1.5, out


def test_an_allowed_fetch_opens_its_destination_through_the_packaged_daemon(box: Box) -> None:
    target = box.lab.clients[0].v4
    box.ct.write("/etc/aitherfwd/policy.yaml", FIREWALL)
    config = (box.ct.root / "etc/aitherfwd/aitherfwd.toml").read_text()
    box.ct.write(
        "/etc/aitherfwd/aitherfwd.toml",
        re.sub(
            r"(?m)^sandbox = .*$", 'sandbox = { groups = ["aitherfwd"], max_ttl = "1h" }', config
        ),
    )
    box.ct.ok("systemctl", "start", "aitherfwd.service")
    wait_for(lambda: box.ct.prop("ActiveState") == "active", 30, "aitherfwd active")
    assert box.tcp_out(target, PORT) == "refused"  # egress: reject
    answer = box.evaluate({"tool": "web.fetch", "params": {"url": f"http://{target}:{PORT}/"}})
    assert answer["allowed"] is True, answer
    assert box.tcp_out(target, PORT) == "ok"
    grants = json.loads(box.ct.ok("aitherfwd", "sandbox", "list", "--json"))
    assert any(g["destination"] == target and g["scope"] == "anonymous" for g in grants["grants"])
    denied = box.evaluate({"tool": "shell.exec", "params": {"url": f"http://{target}:9/"}})
    assert denied["allowed"] is False and box.tcp_out(target, 9) != "ok"
