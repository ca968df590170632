"""Conntrack cuts and anti-lockout queries: what they cost in-process and per ban in a daemon.

- In-process, in a lab namespace whose conntrack table holds `--entries` UDP flows of
  another source: one cut of an address without entries (the common case after a ban),
  IPv4 and IPv6, and one anti-lockout query of port 22 — user CPU of the calling thread
  (mean: what competes for the GIL) and wall time (median, mostly the kernel's walk of its
  conntrack hash).
- Per ban, fresh daemons (default policy): 200 single bans over a kept-alive socket, then
  the daemon's own CPU (user, and user + system, all threads, cuts included) per ban once
  the paced cuts are done, its RSS, and the bans' p50 latency.

`--before DIR` runs the same against another tree (e.g. `git archive <commit> | tar -x -C
DIR`, with `DIR/.venv` linked to this one), alternating with this tree in the same run —
the ratio is the figure that survives a loaded machine. Prints a table; writes nothing.
Run: `sudo .venv/bin/python -m benchmarks.bench_conntrack [--before DIR] [--rounds 4]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.policy.parse import parse_policy
from benchmarks.bench_daemon import KeepAlive, _addresses, start_daemon
from benchmarks.netns import REPO, namespace
from benchmarks.stats import measure
from lab.netns import inside
from lab.network import Lab

HERE = Path(__file__).resolve().parents[1]
BANS = 200  # below the daemon's cut queue (256): every ban gets its cut
FLOWS = r"""
import socket, sys
for port in range(int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port)); s.sendto(b"x", (sys.argv[1], 5353)); s.close()
"""
POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
  - {name: dns, dest_ports: [5353], protocol: udp, action: allow}
"""
Results = dict[str, dict[str, list[float]]]


def _conntrack(tree: Path) -> Any:
    """The conntrack port of `tree`: NetlinkConntrack here, or an older tree's module."""
    spec = importlib.util.spec_from_file_location(
        f"ct_{abs(hash(tree))}", tree / "aitherfwd" / "adapters" / "conntrack.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NetlinkConntrack() if hasattr(module, "NetlinkConntrack") else module


def _cost(fn: Callable[[int], object], reps: int) -> tuple[float, float]:
    user, wall = [], []
    for i in range(reps + 10):
        u0, w0 = resource.getrusage(resource.RUSAGE_THREAD).ru_utime, time.perf_counter()
        fn(i)
        u1, w1 = resource.getrusage(resource.RUSAGE_THREAD).ru_utime, time.perf_counter()
        if i >= 10:
            user.append((u1 - u0) * 1000)
            wall.append((w1 - w0) * 1000)
    return statistics.mean(user), statistics.median(wall)


def in_process(trees: dict[str, Path], entries: int, rounds: int, out: Results) -> None:
    policy = parse_policy(POLICY, "bench.yaml").policy
    assert policy is not None
    with Lab(clients_wanted=1) as lab:
        client = lab.clients[0]
        with inside(lab.server):
            Nft().apply(compile_policy(policy))
        argv = [sys.executable, "-c", FLOWS, client.server_v4, "20000", str(20000 + entries)]
        assert lab.exec(client.ns, argv).returncode == 0
        v4 = [ipaddress.ip_address(f"198.51.100.{i % 250 + 1}") for i in range(220)]
        v6 = [ipaddress.ip_address(f"2001:db8::{i + 1:x}") for i in range(220)]
        with inside(lab.server):
            ports = {name: _conntrack(tree) for name, tree in trees.items()}
            for _ in range(rounds):
                for name, ct in ports.items():
                    for row, fn in (
                        ("cut v4", lambda i, ct=ct: ct.delete_source(v4[i])),
                        ("cut v6", lambda i, ct=ct: ct.delete_source(v6[i])),
                        ("peers([22])", lambda i, ct=ct: ct.established_peers([22])),
                    ):
                        user, wall = _cost(fn, 200)
                        out[name].setdefault(f"{row}: user CPU, mean (ms)", []).append(user)
                        out[name].setdefault(f"{row}: wall, median (ms)", []).append(wall)


def _cpu(pid: int) -> tuple[float, float]:
    """(user, user + system) CPU of a process, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick * 1000, (int(fields[11]) + int(fields[12])) / tick * 1000


def per_ban(trees: dict[str, Path], rounds: int, out: Results) -> None:
    names = list(trees)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            os.environ["PYTHONPATH"] = str(trees[name])
            try:
                _bans(out[name], _addresses(BANS, 0x0A4E0000 + r * 0x1000))
            finally:
                os.environ.pop("PYTHONPATH", None)


def _bans(row: dict[str, list[float]], addrs: list[str]) -> None:
    """One fresh daemon (of the tree PYTHONPATH names), `addrs` banned one by one."""
    default = (REPO / "policies" / "default.yaml").read_text()
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-ct-") as tmp:
        d = start_daemon(ns, Path(tmp), default)
        try:
            assert d.proc is not None
            conn = KeepAlive(d.socket)
            conn.post(b"/v1/blocks", json.dumps({"address": "10.99.0.1", "ttl": "1h"}).encode())
            time.sleep(1.5)  # its cut done (an older tree imports pyroute2 there)
            user0, total0 = _cpu(d.proc.pid)
            samples = measure(
                lambda i: conn.post(
                    b"/v1/blocks", json.dumps({"address": addrs[i], "ttl": "1h"}).encode()
                ),
                len(addrs),
                warmup=0,
            )
            conn.close()
            last, end = _cpu(d.proc.pid)[1], time.monotonic() + 60
            while time.monotonic() < end:  # the cuts are paced: until the CPU rests
                time.sleep(2)
                now = _cpu(d.proc.pid)[1]
                if now - last < 15:
                    break
                last = now
            user1, total1 = _cpu(d.proc.pid)
            n = len(addrs)
            row.setdefault("daemon user CPU per ban, cut included (ms)", []).append(
                (user1 - user0) / n
            )
            row.setdefault("daemon CPU per ban, cut included (ms)", []).append(
                (total1 - total0) / n
            )
            row.setdefault("daemon RSS after the bans (MB)", []).append(d.rss_mb())
            row.setdefault("single ban p50, kept-alive (ms)", []).append(statistics.median(samples))
        finally:
            d.cleanup()


def render(out: Results) -> str:
    names = list(out)
    lines = ["| measurement | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |")]
    lines.append("|---|" + "--:|" * (len(names) + (len(names) == 2)))
    for row in out[names[0]]:
        medians = [statistics.median(out[n][row]) for n in names]
        cells = [f"{m:.3f}" for m in medians]
        if len(names) == 2:
            ratios = [
                a / b for a, b in zip(out[names[1]][row], out[names[0]][row], strict=True) if b
            ]
            cells.append(", ".join(f"{x:.2f}" for x in ratios) or "-")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([*lines, "", f"medians over rounds; ratio per round; load average {load}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, help="another tree to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["this tree"] = HERE
    out: Results = {name: {} for name in trees}
    in_process(trees, args.entries, max(1, args.rounds // 2), out)
    per_ban(trees, args.rounds, out)
    print(render(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
