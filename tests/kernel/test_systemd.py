"""systemd integration without systemd: the daemon's sd_notify messages on a socket the
test owns (READY, STATUS, RELOADING, STOPPING, WATCHDOG), and the unit's hardening score."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import ROOT
from lab.daemon import DaemonProc
from lab.network import Lab
from tests.kernel.test_daemon import POLICY

pytestmark = pytest.mark.kernel


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, deadline_s: float = 10.0) -> str:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for m in self.messages:
                if needle in m:
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {needle!r} in {self.messages}")

    def count(self, needle: str, within_s: float) -> int:
        """Messages containing `needle` received during the next `within_s` seconds."""
        end = time.monotonic() + within_s
        seen = 0
        while time.monotonic() < end:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            seen += needle in message
        return seen


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


def test_notify_ready_status_reloading_watchdog_and_stopping(
    tmp_path: Path, notify: NotifySocket
) -> None:
    with Lab(clients_wanted=1) as lab:
        d = DaemonProc(lab.server, tmp_path, POLICY)
        try:
            d.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
            ready = notify.wait_for("READY=1")
            assert re.search(r"STATUS=generation 1, policy [0-9a-f]{12}", ready)
            assert notify.count("WATCHDOG=1", within_s=1.5) >= 3  # every 0.2 s (half of 0.4 s)
            d.policy.write_text(POLICY.replace("[443]", "[443, 444]"))
            d.ok("POST", "/v1/reload", {})
            reloading = notify.wait_for("RELOADING=1")
            assert "MONOTONIC_USEC=" in reloading
            assert "generation 2" in notify.wait_for("STATUS=generation 2")
            d.policy.write_text(POLICY.replace("[443]", "[99999]"))
            d.ok("POST", "/v1/reload", {})
            assert "REJECTED" in notify.wait_for("REJECTED")
            d.send(signal.SIGTERM)
            notify.wait_for("STOPPING=1")
            assert d.stop() == 0
        finally:
            d.cleanup()


def test_unit_hardening_scores_ok() -> None:
    out = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            str(ROOT / "systemd" / "aitherfwd.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for aitherfwd.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0
    unit = (ROOT / "systemd" / "aitherfwd.service").read_text()
    for line in [
        "Type=notify",
        "ExecReload=",
        "Restart=on-failure",
        "WatchdogSec=",
        "RuntimeDirectory=",
        "StateDirectory=",
        "LogsDirectory=",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "PrivateUsers=no",
    ]:
        assert line in unit
