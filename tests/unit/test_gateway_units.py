"""The gateway's systemd units: socket activation on 127.0.0.1:8475 hands the service its
listening socket (so it runs with PrivateNetwork=yes, a dynamic user and no capabilities),
and the service unit's hardening scores at most 1.5 in `systemd-analyze security`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from lab import AITHERFWD
from lab.gateway import free_port
from lab.wait import until
from tests.unit.gateway_helpers import SEED_POLICY

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "systemd" / "aitherfwd-gateway.service"
SOCKET = ROOT / "systemd" / "aitherfwd-gateway.socket"


def test_the_gateway_unit_scores_at_most_1_5() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(SERVICE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for aitherfwd-gateway.service: ([0-9.]+)", out.stdout
    )
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 1.5
    unit = SERVICE.read_text()
    for line in ("PrivateNetwork=yes", "DynamicUser=yes", "CapabilityBoundingSet=\n"):
        assert line in unit
    assert "ListenStream=127.0.0.1:8475" in SOCKET.read_text()


def test_socket_activation_serves_on_the_socket_it_is_given(tmp_path: Path) -> None:
    policy = tmp_path / "tools.yaml"
    policy.write_text(SEED_POLICY.read_text())
    port = free_port()
    env = {
        **os.environ,
        "POLICY_PATH": str(policy),
        "AUDIT_LOG_PATH": str(tmp_path / "audit.jsonl"),
        "BIND_ADDR": "127.0.0.1:1",  # ignored: the socket comes from the activator
    }
    log = tmp_path / "gateway.log"
    argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}"]
    argv += [f"-E{name}" for name in ("POLICY_PATH", "AUDIT_LOG_PATH", "BIND_ADDR")]
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, AITHERFWD, "gateway"], stdout=out, stderr=out, env=env)
    try:
        until(lambda: "Listening on" in log.read_text(), 10, "the activator to listen")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/evaluate",
            json={"tool": "shell.exec", "params": {}},
            timeout=20,
        )
        assert answer.json() == {"allowed": False, "reason": "tool is explicitly denied"}
        assert "activated=True" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
