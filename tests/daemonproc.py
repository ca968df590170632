"""Run the real daemon (`aitherfwd run`) inside a lab namespace for tests.

Owns: writing its policy and config under a temporary directory, starting it with
`ip netns exec`, waiting (with a deadline) until it answers on its socket, talking to it as
root or as another user (setpriv), and killing it — always, even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.errors import AitherError

ROOT = Path(__file__).resolve().parent.parent
AITHERFWD = str(ROOT / ".venv" / "bin" / "aitherfwd")


class DaemonProc:
    def __init__(self, ns: str, tmp: Path, policy: str, config: str = "") -> None:
        self.ns, self.tmp = ns, tmp
        self.policy = tmp / "policy.yaml"
        self.config = tmp / "aitherfwd.toml"
        # the socket lives where other users can reach it (pytest's tmp dirs are 0700)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="afw-sock-"))
        self._socket_dir.chmod(0o755)
        self.socket = self._socket_dir / "control.sock"
        self.audit = tmp / "audit.jsonl"
        self.state = tmp / "state"
        self.log = tmp / "daemon.log"
        self.policy.write_text(policy)
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            AITHERFWD,
            "run",
            "--policy",
            str(self.policy),
            "--config",
            str(self.config),
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state),
            "--audit-log",
            str(self.audit),
        ]

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> DaemonProc:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, deadline_s: float = 20.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                status, _ = self.request("GET", "/v1/health")
                if status == 200:
                    return
            except AitherError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready in {deadline_s}s: {self.log.read_text()}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return ControlClient(self.socket, timeout=30).request(method, path, body)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body)
        assert status == 200, (status, answer)
        return answer

    def cli(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [AITHERFWD, *args, "--socket", str(self.socket)]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        code = self.proc.returncode
        self.proc = None
        return code

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
