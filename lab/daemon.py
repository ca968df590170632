"""Run the real daemon (`aitherfwd run`) inside a namespace, for tests, benchmarks and
the demo — the one launcher.

Owns: writing its policy and config under a working directory, starting it with
`ip netns exec`, waiting (with a deadline) until it answers on its socket, talking to it as
root or as another user (setpriv), reading its RSS, and killing it — always, even when the
caller fails (`cleanup()`, or `with DaemonProc(...).start() as d:`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.audit_check import validate_line
from aitherfwd.errors import AitherError
from lab import AITHERFWD, netns
from lab.wait import until

# Every audit file a DaemonProc was given: tests/kernel/conftest.py checks each line written
# during a test against the record schema when the test ends.
AUDIT_FILES: list[Path] = []


def audit_problems(path: Path) -> list[str]:
    """Lines off the schema in an audit file, its rotations and the request log beside it
    (regular files only: a test may plant a link or a FIFO at the path)."""
    out: list[str] = []
    files = sorted(path.parent.glob(path.name + "*")) + sorted(path.parent.glob("requests.jsonl*"))
    for f in files:
        if not stat.S_ISREG(f.lstat().st_mode):
            continue
        for number, text in enumerate(f.read_text().splitlines(), 1):
            if not text:
                continue
            try:
                line = json.loads(text)
            except ValueError:
                out.append(f"{f}:{number}: not JSON: {text[:80]!r}")
                continue
            out += [f"{f}:{number}: {p}" for p in validate_line(line)]
    return out


class DaemonProc:
    """`DaemonProc(ns, workdir, policy_text, config_text).start()`; `quiet` sends its
    output to /dev/null instead of `workdir/daemon.log` (benchmarks that log millions of
    lines); `client_timeout` bounds each control request."""

    def __init__(
        self,
        ns: str,
        tmp: Path,
        policy: str,
        config: str = "",
        *,
        quiet: bool = False,
        client_timeout: float = 30,
    ) -> None:
        self.ns, self.tmp, self.quiet = ns, tmp, quiet
        self.policy = tmp / "policy.yaml"
        self.config = tmp / "aitherfwd.toml"
        # the socket lives where other users can reach it (pytest's tmp dirs are 0700)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="afw-sock-"))
        self._socket_dir.chmod(0o755)
        self.socket = self._socket_dir / "control.sock"
        self.audit = tmp / "audit.jsonl"
        AUDIT_FILES.append(self.audit)
        self.state = tmp / "state"
        self.log = tmp / "daemon.log"
        self.policy.write_text(policy)
        self.config.write_text(config)
        self.client = ControlClient(self.socket, timeout=client_timeout)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DaemonProc:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def argv(self) -> list[str]:
        return netns.exec_argv(
            self.ns,
            [
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
            ],
        )

    def start(
        self, *, wait: bool = True, env: dict[str, str] | None = None, deadline_s: float = 20.0
    ) -> DaemonProc:
        environ = {**os.environ, **(env or {})}
        if self.quiet:
            self.proc = subprocess.Popen(
                self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ
            )
        else:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.argv(), stdout=log, stderr=subprocess.STDOUT, env=environ
                )
        if wait:
            self.wait_ready(deadline_s)
        return self

    def output(self) -> str:
        return "" if self.quiet or not self.log.exists() else self.log.read_text()

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.output()}")
        try:
            return self.request("GET", "/v1/health")[0] == 200
        except AitherError:
            return False  # not listening yet

    def wait_ready(self, deadline_s: float = 20.0) -> None:
        try:
            until(self._ready, deadline_s, "the daemon to answer on its socket")
        except TimeoutError as exc:
            raise TimeoutError(f"daemon not ready in {deadline_s}s: {self.output()}") from exc

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.client.request(method, path, body)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The answer of a request that must succeed (AssertionError otherwise)."""
        status, answer = self.request(method, path, body)
        if status != 200:
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return answer

    def post(self, path: str, body: object) -> Any:
        return self.ok("POST", path, body)

    def cli(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [AITHERFWD, *args, "--socket", str(self.socket)]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit line so far, oldest first, the rotated files (`audit.jsonl.N`, the
        highest N oldest) included, each checked against the record schema
        (aitherfwd/audit_records.py): a line the schema does not describe fails the test."""
        rotated = sorted(
            (p for p in self.audit.parent.glob(self.audit.name + ".*") if p.suffix[1:].isdigit()),
            key=lambda p: -int(p.suffix[1:]),
        )
        files = [*rotated, self.audit] if self.audit.exists() else rotated
        lines = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
        for line in lines:
            problems = validate_line(line)
            if problems:
                raise AssertionError(f"audit line off its schema: {line}: {problems}")
        return lines

    def decisions(self, **match: Any) -> list[dict[str, Any]]:
        """The `decision` lines so far whose fields equal `match` (`rule_name="web"`)."""
        return [
            e
            for e in self.audit_events()
            if e["event"] == "decision" and all(e.get(k) == v for k, v in match.items())
        ]

    def rss_mb(self) -> float:
        """Resident memory of the daemon process, in MiB (0 when it is not running)."""
        if self.proc is None:
            return 0.0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def send(self, sig: int) -> None:
        if self.proc is None:
            raise RuntimeError("the daemon is not running")
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
