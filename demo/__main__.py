"""`sudo make demo`: the default policy, applied in a throwaway namespace, under real traffic.

Builds a server namespace and a client namespace (tests/lab.py), applies
policies/default.yaml in the server's namespace with the aitherfwd CLI, then connects from
the client over IPv4 (zone internal) and IPv6 (zone external) and shows for each attempt
what happened and which rule decided — read from the kernel's own per-rule counters.
Then runs the daemon: a ban through the control socket, evaluate, a hot reload that keeps
the ban, the kernel lifting it on time, reported threats climbing the reputation ladder, a
real nmap scan auto-blocked, and a stop that leaves the table enforcing.
Nothing outside the namespaces it creates is touched; they are removed on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aitherfwd.adapters.control_client import ControlClient
from tests.lab import Client, Lab

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "aitherfwd")
POLICY = str(ROOT / "policies" / "default.yaml")
TCP = [22, 80, 443, 3306, 8000, 8111, 9100]
UDP = [53]
_COLOURS = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m")
BOLD, DIM, GREEN, RED, YELLOW, OFF = _COLOURS if sys.stdout.isatty() else ("",) * 6


def say(text: str = "") -> None:
    print(text, flush=True)


def counters(lab: Lab) -> dict[str, int]:
    res = lab.exec(lab.server, [CLI, "counters", "--json"])
    return {k: v["packets"] for k, v in json.loads(res.stdout).items()}


def decided_by(before: dict[str, int], after: dict[str, int]) -> str:
    moved = [k for k in after if after[k] > before.get(k, 0)]
    names = [k.removeprefix("rule_") for k in moved if k.startswith("rule_") or k == "default"]
    names += [k for k in moved if k.startswith("ratelimit_") or k == "blocked"]
    return ", ".join(sorted(set(names))) or "(established/loopback)"


def attempt(lab: Lab, client: Client, addr: str, port: int, proto: str) -> None:
    before = counters(lab)
    result = lab.probe(client, addr, port, proto=proto, timeout=0.7)[0]
    after = counters(lab)
    colour = GREEN if result == "ok" else RED
    shown = {"ok": "allowed", "refused": "rejected", "timeout": "dropped"}.get(result, result)
    src = client.v6 if ":" in addr else client.v4
    say(
        f"  {src:<16} → {port:>5}/{proto:<4} {colour}{shown:<9}{OFF} decided by: "
        f"{BOLD}{decided_by(before, after)}{OFF}"
    )


def step(lab: Lab, title: str, argv: list[str]) -> str:
    say(f"\n{BOLD}$ aitherfwd {' '.join(argv)}{OFF}  {DIM}# {title}{OFF}")
    res = lab.exec(lab.server, [CLI, *argv])
    out = (res.stdout + res.stderr).strip()
    for line in out.splitlines()[-6:]:
        say(f"  {line}")
    return out


def start_daemon(lab: Lab, workdir: Path) -> subprocess.Popen[bytes]:
    (workdir / "aitherfwd.toml").write_text("")
    argv = [
        "ip",
        "netns",
        "exec",
        lab.server,
        CLI,
        "run",
        "--policy",
        str(workdir / "policy.yaml"),
        "--config",
        str(workdir / "aitherfwd.toml"),
        "--socket",
        str(workdir / "control.sock"),
        "--state-dir",
        str(workdir / "state"),
        "--audit-log",
        str(workdir / "audit.jsonl"),
    ]
    log = (workdir / "daemon.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        res = subprocess.run(
            [CLI, "status", "--socket", str(workdir / "control.sock")],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not start: {(workdir / 'daemon.log').read_text()}")


def generation(workdir: Path) -> int:
    res = subprocess.run(
        [CLI, "status", "--json", "--socket", str(workdir / "control.sock")],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(json.loads(res.stdout)["generation"]) if res.returncode == 0 else 0


def client_cmd(workdir: Path, title: str, argv: list[str], lines: int = 8) -> str:
    say(f"\n{BOLD}$ aitherfwd {' '.join(argv)}{OFF}  {DIM}# {title}{OFF}")
    res = subprocess.run(
        [CLI, *argv, "--socket", str(workdir / "control.sock")],
        capture_output=True,
        text=True,
        check=False,
    )
    out = (res.stdout + res.stderr).strip()
    for line in out.splitlines()[-lines:]:
        say(f"  {line}")
    return out


def main() -> int:
    say(f"{BOLD}aitherfwd demo{OFF}: policies/default.yaml in a throwaway network namespace\n")
    with Lab(clients_wanted=1) as lab, tempfile.TemporaryDirectory(prefix="afw-demo-") as tmp:
        workdir = Path(tmp)
        shutil.copy(POLICY, workdir / "policy.yaml")
        client = lab.clients[0]
        lab.listen(TCP, UDP)
        say(
            f"server namespace {lab.server}: {client.server_v4} and {client.server_v6}, "
            f"listening on tcp {TCP} and udp {UDP}"
        )
        say(
            f"client namespace {client.ns}: {client.v4} (zone internal, inside 10.0.0.0/8) and "
            f"{client.v6} (zone external)"
        )
        step(lab, "validate", ["check", POLICY])
        step(lab, "what would change", ["plan", POLICY])
        say(
            f"\n{BOLD}$ aitherfwd run --policy policy.yaml ...{OFF}  {DIM}# the daemon, in the "
            f"server namespace: one transaction, then the control socket{OFF}"
        )
        daemon = start_daemon(lab, workdir)
        try:
            return demo_with_daemon(lab, client, workdir, daemon)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=10)


def demo_with_daemon(
    lab: Lab, client: Client, workdir: Path, daemon: subprocess.Popen[bytes]
) -> int:
    client_cmd(workdir, "the running daemon", ["status"])
    say(f"\n{BOLD}Real connections from the client{OFF}")
    for port, proto in [
        (22, "tcp"),
        (443, "tcp"),
        (8111, "tcp"),
        (8000, "tcp"),
        (3306, "tcp"),
        (53, "udp"),
    ]:
        attempt(lab, client, client.server_v4, port, proto)
    for port, proto in [
        (22, "tcp"),
        (443, "tcp"),
        (8111, "tcp"),
        (9100, "tcp"),
        (3306, "tcp"),
        (53, "udp"),
    ]:
        attempt(lab, client, client.server_v6, port, proto)
    client_cmd(
        workdir,
        "the same question, answered by the daemon's evaluator",
        ["evaluate", "--source", client.v6, "--port", "8111"],
    )

    say(f"\n{BOLD}Per-source rate limit{OFF}: 40 SSH connections in a burst from {client.v4}")
    before = counters(lab)
    results = lab.probe(client, client.server_v4, 22, count=40, timeout=0.2)
    dropped = counters(lab)["ratelimit_ssh"] - before["ratelimit_ssh"]
    say(
        f"  {results.count('ok')} connected, {results.count('timeout')} timed out; the kernel "
        f"dropped {dropped} SYNs over 'rate_limit_rps: 10, burst: 20' (rule ssh)"
    )

    say(f"\n{BOLD}A ban with a kernel timeout{OFF}")
    client_cmd(
        workdir,
        "block through the control socket",
        ["block", client.v4, "--ttl", "8s", "--reason", "demo"],
    )
    attempt(lab, client, client.server_v4, 443, "tcp")
    client_cmd(workdir, "why?", ["evaluate", "--source", client.v4, "--port", "443"])

    say(f"\n{BOLD}Hot reload{OFF}: the policy file gains a rule opening 3306 to the LAN")
    text = (workdir / "policy.yaml").read_text()
    (workdir / "policy.yaml").write_text(text + RULE_3306)
    deadline = time.monotonic() + 5
    while generation(workdir) != 2:
        if time.monotonic() > deadline:
            say(f"  {RED}the reload did not happen{OFF}")
            return 1
        time.sleep(0.05)
    client_cmd(workdir, "inotify picked it up within a second", ["status"])
    client_cmd(workdir, "the ban survived the reload, with its remaining time", ["blocks"])
    attempt(lab, client, client.server_v4, 443, "tcp")
    started = time.monotonic()
    while lab.tcp(client, client.server_v4, 443, timeout=0.3) != "ok":
        if time.monotonic() - started > 15:
            say(f"  {RED}the ban did not expire{OFF}")
            return 1
    say(f"  {YELLOW}the kernel lifted the ban on its own{OFF}: {client.v4} connects again")
    attempt(lab, client, client.server_v4, 3306, "tcp")
    say(f"\n{BOLD}Auto-block{OFF}: a sensor reports port scans from {client.v6}")
    for i in range(5):
        out = client_cmd(
            workdir,
            f"threat event {i + 1} of 5",
            ["threat", "--type", "SENTRY_PORT_SCAN", "--source", client.v6, "--severity", "low"],
        )
    if "blocked" not in out.split("\n", 1)[-1]:
        say(f"  {RED}the reputation ladder did not block{OFF}")
        return 1
    attempt(lab, client, client.server_v6, 443, "tcp")
    client_cmd(
        workdir,
        "the whole story: verdicts, the block, the score and the events behind it",
        ["explain", client.v6, "--port", "443"],
        lines=20,
    )
    client_cmd(workdir, "lift it by hand", ["unblock", out.split("blocked ")[-1].split()[0]])
    attempt(lab, client, client.server_v6, 443, "tcp")
    if not scan_is_blocked(lab, client, workdir):
        return 1
    step(lab, "per-rule counters in the kernel", ["counters"])

    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=15)
    say(
        f"\n{BOLD}daemon stopped{OFF} (exit {daemon.returncode}); fail-static: the table keeps "
        "enforcing"
    )
    attempt(lab, client, client.server_v4, 3306, "tcp")
    attempt(lab, client, client.server_v6, 3306, "tcp")
    say(f"\n{DIM}namespaces removed; the host's own firewall was never touched{OFF}")
    return 0


def scan_is_blocked(lab: Lab, client: Client, workdir: Path) -> bool:
    """A real `nmap -sS` from the client: the kernel reports the denied ports, the daemon
    sees a port scan and blocks the scanner through the reputation ladder."""
    say(f"\n{BOLD}Detection{OFF}: a real port scan, `nmap -sS -p 1-1000` from {client.v4}")
    argv = ["ip", "netns", "exec", client.ns, "timeout", "20", "nmap", "-n", "-Pn", "-T4"]
    argv += ["--max-retries", "0", "-sS", "-p", "1-1000", client.server_v4]
    api = ControlClient(workdir / "control.sock", timeout=10)
    started = time.monotonic()
    # its own session: nmap is timeout's child, and the whole group is killed afterwards
    scan = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while not any(
            b["address"] == client.v4 for b in api.request("GET", "/v1/blocks")[1]["blocks"]
        ):
            if time.monotonic() - started > 10:
                say(f"  {RED}the scanner was not blocked{OFF}")
                return False
            time.sleep(0.05)
    finally:
        os.killpg(scan.pid, signal.SIGKILL)
        scan.wait()
    took = time.monotonic() - started
    say(f"  {YELLOW}auto-blocked {took:.2f} s after nmap started{OFF} (nmap's start-up included)")
    attempt(lab, client, client.server_v4, 443, "tcp")
    client_cmd(workdir, "why?", ["explain", client.v4, "--port", "443"], lines=14)
    client_cmd(workdir, "lift it by hand", ["unblock", client.v4])
    return True


RULE_3306 = """
  - name: lan_mysql
    zone: internal
    dest_ports: [3306]
    protocol: tcp
    action: allow
    description: "added while the daemon runs: hot reload"
"""


if __name__ == "__main__":
    sys.exit(main())
