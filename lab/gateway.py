"""A real tool-call gateway (`aitherfwd gateway`, uvicorn) in a subprocess, for tests,
benchmarks and the demo.

Owns: `GatewayProc` — writes the policy, picks a free loopback port (or runs inside a
network namespace), passes seed 003's environment variables, waits for `/health`, and
stops the process (SIGTERM, then SIGKILL) even when a test fails. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from lab import AITHERFWD, auditfiles, netns
from lab.wait import until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProc:
    def __init__(
        self,
        tmp: Path,
        policy: str,
        *,
        ns: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.tmp, self.ns = tmp, ns
        self.policy = tmp / "tools.yaml"
        self.audit = auditfiles.register(tmp / "gateway-audit.jsonl")  # checked after each test
        self.token = tmp / "service-token"
        self.log = tmp / "gateway.log"
        self.policy.write_text(policy)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "BIND_ADDR": f"127.0.0.1:{self.port}",
            "POLICY_PATH": str(self.policy),
            "AUDIT_LOG_PATH": str(self.audit),
            "SERVICE_TOKEN_PATH": str(self.token),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GatewayProc:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, deadline_s: float = 20.0) -> GatewayProc:
        argv = [AITHERFWD, "gateway"]
        if self.ns is not None:
            argv = netns.exec_argv(self.ns, argv)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        try:
            until(self._ready, deadline_s, "the gateway to answer /health")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"gateway not ready: {self.output()}") from exc
        return self

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.output()}")
        try:
            with self._here(), urllib.request.urlopen(self.url + "/health", timeout=2) as a:  # noqa: S310
                return bool(a.status == 200)
        except OSError:
            return False

    def _here(self) -> contextlib.AbstractContextManager[None]:
        """The gateway's namespace for this thread (its loopback is not ours)."""
        return netns.inside(self.ns) if self.ns is not None else contextlib.nullcontext()

    def audit_lines(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
