"""Supervision of the whole daemon (daemon/main.py) on fake ports, without privilege: a
kernel writer that fails unexpectedly ends the process with exit 1 (so systemd restarts
it) instead of leaving every later request waiting forever; SIGTERM ends it with 0."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.config import DaemonConfig
from aitherfwd.daemon import main as daemon_main
from aitherfwd.errors import AitherError
from aitherfwd.roles import RoleMembers
from aitherfwd.testing import FakeKernel, fake_daemon

POLICY = """\
version: 1
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""


class BrokenOnElements(FakeKernel):
    """Accepts the ruleset, then fails the first element write with an unexpected error."""

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any("element" in body for c in commands for body in c.values()):
            raise KeyError("a bug behind the kernel port")
        return super().run(commands)


def config(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(
        policy=tmp_path / "policy.yaml",
        socket=tmp_path / "control.sock",
        state_dir=tmp_path / "state",
        audit_log=tmp_path / "audit.jsonl",
        metrics_listen="",
        drift_check_interval=0.2,
        # the test's client is this process: an administrator as root or unprivileged
        roles={"admin": RoleMembers(uids=frozenset({os.getuid()}), gids=frozenset())},
    )


def serve(tmp_path: Path, kernel: FakeKernel | None = None) -> tuple[Any, ...]:
    fake = fake_daemon(tmp_path, POLICY)
    ports = fake.services.ports
    if kernel is not None:
        ports = dataclasses.replace(ports, kernel=kernel)
    return fake, ports


def wait_for_socket(path: Path, deadline: float = 10.0) -> ControlClient:
    client = ControlClient(path, timeout=2.0)
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        try:
            client.request("GET", "/v1/health")
            return client
        except AitherError:
            time.sleep(0.02)
    raise AssertionError("the daemon never answered")


def test_an_unexpected_writer_failure_exits_nonzero_instead_of_hanging(tmp_path: Path) -> None:
    _, ports = serve(tmp_path, BrokenOnElements())
    cfg = config(tmp_path)
    answers: list[Any] = []

    def client() -> None:
        c = wait_for_socket(cfg.socket)
        try:
            answers.append(c.request("POST", "/v1/blocks", {"blocks": [{"address": "192.0.2.7"}]}))
        except AitherError as exc:  # the daemon went away mid-request
            answers.append(exc)

    t = threading.Thread(target=client)
    t.start()
    code = asyncio.run(asyncio.wait_for(daemon_main.run(cfg, ports), 20))
    t.join(10)
    assert code == 1
    assert answers  # the request got an answer (an error), it did not hang


def test_sigterm_stops_the_daemon_with_exit_zero_and_keeps_the_table(tmp_path: Path) -> None:
    fake, ports = serve(tmp_path)
    cfg = config(tmp_path)

    def stop() -> None:
        wait_for_socket(cfg.socket)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=stop)
    t.start()
    code = asyncio.run(asyncio.wait_for(daemon_main.run(cfg, ports), 20))
    t.join(10)
    assert code == 0
    assert fake.kernel.observe().exists  # fail-static: stopping never removes the table
    events = [e["event"] for e in fake.audit_events()]
    assert events[0] == "daemon_started" and events[-1] == "daemon_stopped"
