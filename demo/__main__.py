"""`sudo make demo`: the default policy, applied in a throwaway namespace, under real traffic.

Builds a server namespace and a client namespace (tests/lab.py), applies
policies/default.yaml in the server's namespace with the aitherfwd CLI, then connects from
the client over IPv4 (zone internal) and IPv6 (zone external) and shows for each attempt
what happened and which rule decided — read from the kernel's own per-rule counters.
Ends with a per-source rate limit and a timed block that the kernel lifts by itself.
Nothing outside the namespaces it creates is touched; they are removed on exit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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


def main() -> int:
    say(f"{BOLD}aitherfwd demo{OFF}: policies/default.yaml in a throwaway network namespace\n")
    with Lab(clients_wanted=1) as lab:
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
        step(lab, "one transaction", ["apply", POLICY])
        step(lab, "nothing left to do", ["plan", POLICY])

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

        say(f"\n{BOLD}Per-source rate limit{OFF}: 40 SSH connections in a burst from {client.v4}")
        before = counters(lab)
        results = lab.probe(client, client.server_v4, 22, count=40, timeout=0.2)
        after = counters(lab)
        dropped = after["ratelimit_ssh"] - before["ratelimit_ssh"]
        say(
            f"  {results.count('ok')} connected, {results.count('timeout')} timed out; the kernel "
            f"dropped {dropped} SYNs over 'rate_limit_rps: 10, burst: 20' (rule ssh)"
        )

        say(f"\n{BOLD}A block with a kernel timeout{OFF} (what the daemon's auto-blocks write)")
        lab.exec(lab.server, [sys.executable, "-m", "demo.block", client.v4, "4"])
        attempt(lab, client, client.server_v4, 443, "tcp")
        step(lab, "re-applying keeps the block", ["apply", POLICY])
        attempt(lab, client, client.server_v4, 443, "tcp")
        started = time.monotonic()
        while lab.tcp(client, client.server_v4, 443, timeout=0.3) != "ok":
            if time.monotonic() - started > 10:
                say(f"  {RED}the block did not expire{OFF}")
                return 1
        say(
            f"  {YELLOW}block expired after {time.monotonic() - started:.1f}s{OFF}: "
            f"{client.v4} connects again"
        )
        step(lab, "per-rule counters in the kernel", ["counters"])
    say(f"\n{DIM}namespaces removed; the host's own firewall was never touched{OFF}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
