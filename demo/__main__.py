"""`sudo make demo`: the default policy, applied in a throwaway namespace, under real traffic.

Builds a server namespace and a client namespace (lab/network.py), applies
policies/default.yaml in the server's namespace with the aitherfwd CLI, then connects from
the client over IPv4 (zone internal) and IPv6 (zone external) and shows for each attempt
what happened and which rule decided — read from the kernel's own per-rule counters.
Then runs the daemon: a ban through the control socket, evaluate, a hot reload that keeps
the ban, the kernel lifting it on time, reported threats climbing the reputation ladder, a
real nmap scan auto-blocked, egress control with a sandbox grant expiring, a container's
published port closed, opened by a rule and closed to a banned client (demo/containers.py),
the tool-call gateway's decisions opening the agent's network for a call (demo/gateway.py),
the ASGI middleware judging a client behind a proxy (demo/middleware.py), and a stop that
leaves the table enforcing.
Nothing outside the namespaces it creates is touched; they are removed on exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aitherfwd.adapters.control_client import ControlClient
from demo.containers import demo_containers
from demo.gateway import demo_gateway
from demo.middleware import demo_middleware
from lab import AITHERFWD as CLI
from lab import ROOT
from lab.daemon import DaemonProc
from lab.network import LISTENER, PROBE, Client, Lab
from lab.wait import until

POLICY = ROOT / "policies" / "default.yaml"
TCP = [22, 80, 443, 3306, 8000, 8111, 9100]
UDP = [53]
SCAN_WINDOW_S = 11  # settings.scan.window of policies/default.yaml, and a second
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


def generation(d: DaemonProc) -> int:
    status, answer = d.request("GET", "/v1/status")
    return int(answer["generation"]) if status == 200 else 0


def within(predicate: Callable[[], object], deadline_s: float, failure: str) -> bool:
    """Whether `predicate` came true in time; says `failure` in red when it did not."""
    try:
        until(predicate, deadline_s, failure)
    except TimeoutError:
        say(f"  {RED}{failure}{OFF}")
        return False
    return True


def reloaded(d: DaemonProc, expected: int) -> bool:
    """Whether the daemon picked up the edited policy file (its generation moved) in time."""
    return within(lambda: generation(d) == expected, 5, "the reload did not happen")


def client_cmd(d: DaemonProc, title: str, argv: list[str], lines: int = 8) -> str:
    say(f"\n{BOLD}$ aitherfwd {' '.join(argv)}{OFF}  {DIM}# {title}{OFF}")
    res = d.cli(*argv)
    out = (res.stdout + res.stderr).strip()
    for line in out.splitlines()[-lines:]:
        say(f"  {line}")
    return out


def main() -> int:
    say(f"{BOLD}aitherfwd demo{OFF}: policies/default.yaml in a throwaway network namespace\n")
    with Lab(clients_wanted=1) as lab, tempfile.TemporaryDirectory(prefix="afw-demo-") as tmp:
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
        step(lab, "validate", ["check", str(POLICY)])
        step(lab, "what would change", ["plan", str(POLICY)])
        say(
            f"\n{BOLD}$ aitherfwd run --policy policy.yaml ...{OFF}  {DIM}# the daemon, in the "
            f"server namespace: one transaction, then the control socket{OFF}"
        )
        with DaemonProc(lab.server, Path(tmp), POLICY.read_text()) as daemon:
            try:
                daemon.start()
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"the daemon did not start: {exc}") from exc
            return demo_with_daemon(lab, client, daemon)


def demo_with_daemon(lab: Lab, client: Client, daemon: DaemonProc) -> int:
    client_cmd(daemon, "the running daemon", ["status"])
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
        daemon,
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
        daemon,
        "block through the control socket",
        ["block", client.v4, "--ttl", "8s", "--reason", "demo"],
    )
    attempt(lab, client, client.server_v4, 443, "tcp")
    client_cmd(daemon, "why?", ["evaluate", "--source", client.v4, "--port", "443"])

    say(f"\n{BOLD}Hot reload{OFF}: the policy file gains a rule opening 3306 to the LAN")
    daemon.policy.write_text(daemon.policy.read_text() + RULE_3306)
    if not reloaded(daemon, 2):
        return 1
    client_cmd(daemon, "inotify picked it up within a second", ["status"])
    client_cmd(daemon, "the ban survived the reload, with its remaining time", ["blocks"])
    attempt(lab, client, client.server_v4, 443, "tcp")
    if not within(
        lambda: lab.tcp(client, client.server_v4, 443, timeout=0.3) == "ok",
        15,
        "the ban did not expire",
    ):
        return 1
    say(f"  {YELLOW}the kernel lifted the ban on its own{OFF}: {client.v4} connects again")
    attempt(lab, client, client.server_v4, 3306, "tcp")
    say(f"\n{BOLD}Auto-block{OFF}: a sensor reports port scans from {client.v6}")
    for i in range(5):
        out = client_cmd(
            daemon,
            f"threat event {i + 1} of 5",
            ["threat", "--type", "SENTRY_PORT_SCAN", "--source", client.v6, "--severity", "low"],
        )
    if "blocked" not in out.split("\n", 1)[-1]:
        say(f"  {RED}the reputation ladder did not block{OFF}")
        return 1
    attempt(lab, client, client.server_v6, 443, "tcp")
    client_cmd(
        daemon,
        "the whole story: verdicts, the block, the score and the events behind it",
        ["explain", client.v6, "--port", "443"],
        lines=20,
    )
    client_cmd(daemon, "lift it by hand", ["unblock", out.split("blocked ")[-1].split()[0]])
    attempt(lab, client, client.server_v6, 443, "tcp")
    if not scan_is_blocked(lab, client, daemon):
        return 1
    scanned = time.monotonic()
    step(lab, "per-rule counters in the kernel", ["counters"])
    chapter = {"say": say, "attempt": attempt, "client_cmd": client_cmd, "reloaded": reloaded}
    if (
        demo_egress(lab, client, daemon) != 0
        or not scan_window_passed(scanned)
        or demo_containers(lab, client, daemon, **chapter) != 0
        or demo_gateway(lab, client, daemon, say=say, outbound=outbound) != 0
        or demo_middleware(lab, client, daemon, say=say, client_cmd=client_cmd, reloaded=reloaded)
        != 0
    ):
        return 1

    code = daemon.stop(signal.SIGTERM)
    say(f"\n{BOLD}daemon stopped{OFF} (exit {code}); fail-static: the table keeps enforcing")
    attempt(lab, client, client.server_v4, 3306, "tcp")
    attempt(lab, client, client.server_v6, 3306, "tcp")
    say(f"\n{DIM}namespaces removed; the host's own firewall was never touched{OFF}")
    return 0


def containers(lab: Lab, client: Client, daemon: DaemonProc) -> int:
    return demo_containers(
        lab, client, daemon, say=say, attempt=attempt, client_cmd=client_cmd, reloaded=reloaded
    )


def scan_window_passed(scanned: float) -> bool:
    """Waits out the scan detector's window after nmap (settings.scan: 10 s in
    policies/default.yaml): the containers chapter's first denied port from the same client
    inside it would be a second scan and a second block. A time window: nothing to poll."""
    time.sleep(max(0.0, scanned + SCAN_WINDOW_S - time.monotonic()))
    return True


def scan_is_blocked(lab: Lab, client: Client, daemon: DaemonProc) -> bool:
    """A real `nmap -sS` from the client: the kernel reports the denied ports, the daemon
    sees a port scan and blocks the scanner through the reputation ladder."""
    say(f"\n{BOLD}Detection{OFF}: a real port scan, `nmap -sS -p 1-1000` from {client.v4}")
    argv = ["ip", "netns", "exec", client.ns, "timeout", "20", "nmap", "-n", "-Pn", "-T4"]
    argv += ["--max-retries", "0", "-sS", "-p", "1-1000", client.server_v4]
    api = ControlClient(daemon.socket, timeout=10)
    started = time.monotonic()
    # its own session: nmap is timeout's child, and the whole group is killed afterwards
    scan = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if not within(
            lambda: any(
                b["address"] == client.v4 for b in api.request("GET", "/v1/blocks")[1]["blocks"]
            ),
            10,
            "the scanner was not blocked",
        ):
            return False
    finally:
        os.killpg(scan.pid, signal.SIGKILL)
        scan.wait()
    took = time.monotonic() - started
    say(f"  {YELLOW}auto-blocked {took:.2f} s after nmap started{OFF} (nmap's start-up included)")
    attempt(lab, client, client.server_v4, 443, "tcp")
    client_cmd(daemon, "why?", ["explain", client.v4, "--port", "443"], lines=14)
    client_cmd(daemon, "lift it by hand", ["unblock", client.v4])
    return True


def outbound(lab: Lab, addr: str, port: int) -> None:
    """A real outbound connection from the protected (server) namespace."""
    res = lab.exec(lab.server, [sys.executable, "-c", PROBE, "tcp", addr, str(port), "1", "1", ""])
    outcome = json.loads(res.stdout)[0] if res.returncode == 0 else "error"
    colour = GREEN if outcome == "ok" else RED
    say(f"  outbound tcp -> {addr}:{port}  {colour}{outcome}{OFF}")


def demo_egress(lab: Lab, client: Client, daemon: DaemonProc) -> int:
    say(
        f"\n{BOLD}Egress control{OFF}: the policy gains an egress: section (outbound rejected "
        f"unless allowed; {client.v6} is known_bad) — the client now listens on 8080"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", client.ns, sys.executable, "-c", LISTENER, "8080", "", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lab._procs.append(proc)  # the lab kills it on exit, like its own listeners
    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
        return 1
    daemon.policy.write_text(daemon.policy.read_text() + EGRESS.format(bad=client.v6))
    if not reloaded(daemon, 3):
        return 1
    outbound(lab, client.v4, 8080)
    client_cmd(
        daemon,
        "a proxy grants its agent a few seconds",
        ["sandbox", "add", client.v4, "--ttl", "4s", "--scope", "sandbox-demo", "--port", "8080"],
    )
    outbound(lab, client.v4, 8080)
    client_cmd(daemon, "live grants", ["sandbox", "list"])
    client_cmd(daemon, "known_bad is never granted", ["sandbox", "add", client.v6])
    probe = [sys.executable, "-c", PROBE, "tcp", client.v4, "8080", "1", "0.5", ""]
    if not within(
        lambda: lab.exec(lab.server, probe).stdout.strip() != '["ok"]',
        15,
        "the grant did not expire",
    ):
        return 1
    say(f"  {YELLOW}the sandbox grant expired in the kernel{OFF}: the destination is closed")
    outbound(lab, client.v4, 8080)
    return 0


EGRESS = """
egress:
  default_action: reject
  known_bad: ["{bad}"]
sandbox: {{max_ttl: 1h, default_ttl: 5m, allowed_ports: [8080]}}
"""

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
