"""Fleet benchmarks: how fast a decision on host A is enforced on host B over a local bus.

Owns: a hub namespace with a real nats-server (JetStream, storage in a temporary
directory) and two real daemons, A and B, in namespaces of their own (lab/network.py,
lab/nats.py), then timing — a block on A until B's kernel took it (B's `blocked` audit
line is written after its kernel accepted the element), 10,000 blocks in one request on A
until B holds them all, B catching up 100,000 decisions it missed while it was stopped —
and the daemons' RSS with and without `[fleet]` (the baseline, same run). Writes
docs/benchmarks-fleet.md. Run: `sudo .venv/bin/python -m benchmarks.bench_fleet [--quick]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aitherfwd.adapters.control_client import ControlUnavailable
from benchmarks import doc
from benchmarks.netns import REPO
from benchmarks.stats import Summary
from lab.daemon import DaemonProc
from lab.nats import NatsServer
from lab.network import Lab
from lab.wait import until

OUT = REPO / "docs" / "benchmarks-fleet.md"
POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
zones:
  - {name: management, cidrs: [10.77.250.0/24]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
FLEET = """\
[metrics]
listen = ""
[fleet]
servers = ["nats://{hub}:4222"]
name = "bench"
host = "{host}"
backlog = 200000
"""


class Tail:
    """Counts the fleet decisions a daemon has applied (`applied` of `GET /v1/fleet`,
    counted once the kernel accepted them). Not its audit log's `blocked` lines: beyond 10
    a minute the audit budget folds the fleet's blocks into one summary line
    (daemon/audit_budget.py)."""

    def __init__(self, daemon: DaemonProc) -> None:
        self.daemon, self.blocked = daemon, 0

    def poll(self) -> int:
        """Decisions applied since the daemon started; -1 while it is not answering."""
        try:
            self.blocked = int(self.daemon.ok("GET", "/v1/fleet")["applied"])
        except ControlUnavailable:
            return -1
        return self.blocked

    def wait_for(self, total: int, deadline_s: float) -> None:
        until(lambda: self.poll() >= total, deadline_s, f"{total} blocks", interval=0.002)


def _addresses(count: int, base: int) -> list[dict[str, Any]]:
    return [{"address": str(ipaddress.IPv4Address(base + i)), "ttl": "1h"} for i in range(count)]


def run(quick: bool) -> list[doc.Row]:
    singles, bulk, missed = (30, 2_000, 10_000) if quick else (200, 10_000, 100_000)
    rounds, catchups = (2, 1) if quick else (5, 3)
    rows: list[doc.Row] = []
    with Lab(clients_wanted=2) as lab, tempfile.TemporaryDirectory(prefix="afwb-f-") as tmp:
        hub = NatsServer(lab.server, Path(tmp) / "hub").start()
        daemons: list[DaemonProc] = []
        try:
            a_c, b_c = lab.clients
            plain = DaemonProc(a_c.ns, _dir(tmp, "plain"), POLICY, quiet=True).start()
            time.sleep(1)
            rows.append(("daemon RSS idle, no [fleet] (baseline)", _rss(plain), "MB", ""))
            plain.cleanup()
            for name, c in (("a", a_c), ("b", b_c)):
                config = FLEET.format(hub=c.server_v4, host=name)
                d = DaemonProc(c.ns, _dir(tmp, name), POLICY, config, client_timeout=120)
                daemons.append(d.start())
                until(lambda d=d: d.ok("GET", "/v1/fleet")["connected"], 15, "connected")
            a, b = daemons
            time.sleep(1)
            rows.append(("daemon RSS idle, [fleet] connected", _rss(b), "MB", "≤ +15 MB"))
            tail = Tail(b)
            samples = []
            for i in range(singles):
                start = time.perf_counter()
                a.post("/v1/fleet/blocks", _addresses(1, 0x0A500000 + i)[0])
                tail.wait_for(i + 1, 10)
                samples.append((time.perf_counter() - start) * 1000)
            rows.append(
                (
                    "one block on A → in B's kernel (A's request, bus, B's apply)",
                    Summary.of(samples),
                    "ms",
                    "p50 ≤ 50 ms, p99 ≤ 250 ms",
                )
            )
            rows.append((f"  the same, p99 of {singles}", Summary.of([_p99(samples)]), "ms", ""))
            rows += _bulk(a, b, tail, bulk, rounds)
            rows += _catch_up(a, b, tail, missed, catchups)
            held = f"{b.ok('GET', '/v1/status')['elements']['block_v4']:,} blocks"
            rows.append((f"daemon RSS of A, its own blocks ({held}) (baseline)", _rss(a), "MB", ""))
            rows.append((f"daemon RSS of B after the catch-ups ({held})", _rss(b), "MB", ""))
        finally:
            for d in daemons:
                d.cleanup()
            hub.stop()
    return rows


def _bulk(a: DaemonProc, b: DaemonProc, tail: Tail, bulk: int, rounds: int) -> list[doc.Row]:
    """`rounds` requests of `bulk` blocks on A until B holds them all; the baseline is A's
    own request (its store and kernel write of the same blocks), timed in the same round."""
    local, fleet = [], []
    for r in range(rounds):
        done = tail.poll()
        start = time.perf_counter()
        a.post("/v1/fleet/blocks", {"blocks": _addresses(bulk, 0x0A600000 + r * 0x10000)})
        local.append((time.perf_counter() - start) * 1000)
        tail.wait_for(done + bulk, 120)
        fleet.append((time.perf_counter() - start) * 1000)
    ratio = [f / max(1e-3, loc) for f, loc in zip(fleet, local, strict=True)]
    return [
        (f"{bulk:,} blocks: A's own request (baseline)", Summary.of(local), "ms", ""),
        (
            f"{bulk:,} blocks in one request on A → all in B's kernel",
            Summary.of(fleet),
            "ms",
            "≤ 2,000 ms",
        ),
        ("  the same ÷ A's own request, per round", Summary.of(ratio), "times", ""),
    ]


def _catch_up(a: DaemonProc, b: DaemonProc, tail: Tail, missed: int, rounds: int) -> list[doc.Row]:
    """`rounds` times: B restarted with nothing missed (the baseline: its restart alone,
    until connected with no lag), then B stopped, `missed` blocks on A published, B
    started until it holds them all."""
    restart, catch = [], []
    first: list[doc.Row] = []
    for r in range(rounds):
        b.stop()
        start = time.perf_counter()
        b.start(deadline_s=60)
        until(lambda: _idle(b), 60, "B connected with nothing to catch up")
        restart.append((time.perf_counter() - start) * 1000)
        b.stop()
        body = {"blocks": _addresses(missed, 0x0B000000 + r * 0x40000)}
        a.post("/v1/fleet/blocks", body)
        until(lambda: a.ok("GET", "/v1/fleet")["backlog"] == 0, 600, "A's backlog published")
        start = time.perf_counter()
        b.start(deadline_s=60)
        tail.wait_for(missed, 600)  # a restarted daemon counts from zero
        catch.append((time.perf_counter() - start) * 1000)
        if r == 0:
            until(lambda: _idle(b), 60, "B idle after the catch-up")
            time.sleep(1)  # the heap trimmed once the catch-up is over
            held = f"{b.ok('GET', '/v1/status')['elements']['block_v4']:,} blocks"
            first = [
                (f"daemon RSS of A, its own blocks ({held}) (baseline)", _rss(a), "MB", ""),
                (f"daemon RSS of B after the first catch-up ({held})", _rss(b), "MB", ""),
            ]
    return [
        *first,
        ("B's restart, nothing missed (baseline)", Summary.of(restart), "ms", ""),
        (
            f"B catching up {missed:,} missed decisions (from its restart)",
            Summary.of(catch),
            "ms",
            "≤ 5,000 ms",
        ),
        (
            "  the same minus B's restart (median - median)",
            Summary.of([statistics.median(catch) - statistics.median(restart)]),
            "ms",
            "",
        ),
    ]


def _idle(d: DaemonProc) -> bool:
    f = d.ok("GET", "/v1/fleet")
    return bool(f["connected"]) and f["lag"] == 0


def _dir(tmp: str, name: str) -> Path:
    path = Path(tmp) / name
    path.mkdir()
    return path


def _rss(d: DaemonProc) -> Summary:
    return Summary.of([d.rss_mb()])


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    command = "sudo .venv/bin/python -m benchmarks.bench_fleet" + (" --quick" if args.quick else "")
    text = doc.table("Fleet benchmarks", rows, command)
    print(text)
    if not args.quick:
        OUT.write_text(text + "\n" + NOTES)
    print(json.dumps({"ok": True}), file=sys.stderr)
    return 0


NOTES = """\
The table above is a run at 13:51 UTC on a quiet machine (load 0.6-0.8) by the integrator,
after the audit budget (issue 14) began folding a fleet's `blocked` lines beyond 10 a minute:
B's arrivals are now counted by `applied` of `GET /v1/fleet` (polled every 2 ms), not by
tailing B's audit log, which adds the polls' cost to the single-block figure. The medians
below are of five runs taken one after the other on 2026-12-05 between 12:59 and 13:02 UTC,
while other engineers' tests shared the 2 cores: `uptime` gave a load average of 2.1 at
the start of the first run and 3.3, 3.4, 3.2, 2.9, 2.4 at the ends of
the five. Absolute times move with that load; the same-run baselines and ratios hold
better. Medians over the five runs (each run's own median, then the median of those):

| median of 5 runs' medians | before (a message per decision) | now (batches) | target |
|---|--:|--:|---|
| one block on A → in B's kernel, p50 / p99 | 4.0 / 22.6 ms | 3.7 / 12.2 ms | ≤ 50 / ≤ 250 ms |
| 10,000 blocks in one request on A → all in B's kernel | 3,832 ms | 348 ms | ≤ 2,000 ms |
| the same, A's own request alone (baseline) | — | 174 ms | |
| the same ÷ A's own request | — | 2.0 times | |
| B catching up 100,000 missed decisions, from its restart | 10,704 ms | 2,992 ms | ≤ 5,000 ms |
| B's restart alone, nothing missed (baseline) | — | 1,288 ms | |
| catch-up minus restart (per run, then median) | — | 1,749 ms | |
| daemon RSS idle, with [fleet] minus without | +1.7 MB | +2.2 MB | ≤ +15 MB |
| B's RSS after the (first) catch-up | 152.9 MB (110,200 blocks) | 72.0 MB (150,200 blocks) | |
| A's RSS holding the same blocks, made locally (baseline) | — | 76.3 MB | |

("before" is the single run of docs/benchmarks-fleet.md at commit 51f2ac4, load 4.6-9.6.)
Five earlier runs of nearly the same code (before the publishing order of batches and the
reason cache of the receiver), at 12:51-12:56 with a load of 3.0-8.5, gave medians of
783 ms for the 10,000 blocks (A's own request 321 ms, ratio 2.1) and 5,671 ms for the
catch-up (restart 2,642 ms; catch-up minus restart 2,384 ms): the catch-up target held
in two of those five runs (3.95 s, 3.99 s) and not in three (5.7-7.6 s); the load decides.

What the numbers say:
- A request of many blocks is now one message per 4,096 decisions (fleet/batch.py), applied
  on B as one block batch — the path of a bulk `aitherfwd block` — after judging each
  decision once (protected ranges, live admin sessions, local blocks, expiry). 10,000 blocks
  reach B's kernel in 0.32-0.46 s (per-run medians), twice A's own request: A's request,
  then the same work on B. Every run's median is inside the 2 s target, at either load
  (one p90 of the loaded runs was 2.07 s).
- The catch-up of 100,000 decisions takes 2.9-3.5 s from B's restart (per-run medians), of
  which B's restart alone is 1.2-1.7 s (it restores 50,000-350,000 blocks: B keeps every
  round's blocks, so each round restarts a bigger daemon than the last; the 10.7 s before
  were measured with ≈ 10,000). Applying the 100,000 (25 messages) is 1.6-1.8 s, about what
  a local request of 100,000 blocks costs (docs/benchmarks-daemon.md: 1.9 s on a quiet
  machine): what remains is the block path and the restart, not the bus.
- Memory. Where B's 150 MB went: (1) the message-id memory kept the last 50,000 ids, one
  string and one OrderedDict entry each: 11.3 MB (tracemalloc of that structure filled
  the same way), never given back; (2) most likely — inferred, not measured object by
  object — 100,000 nats-py message objects, `Delivery`s, parsed JSON objects and
  `Decision`s made in fetches of 2,000 and interleaved on the heap with long-lived
  objects, so their freed arenas could not be returned (RSS stayed at 150-165 MB after
  `malloc_trim`). Now a batch is one id and a handful of objects per 4,096 decisions, and
  the id memory is bounded two ways: the highest stream sequence applied per consumer (a
  redelivery at or below it is a duplicate) and the last 4,096 message ids (a message
  republished after JetStream's duplicate window). B's RSS after taking its blocks from the
  fleet is at or below that of A holding the same blocks made by local requests (72 vs
  76 MB at 150,200 blocks; 97 vs 110 MB at 350,200), and fleet mode costs ≈ 2 MB idle.
- One block's latency is unchanged (a single block is still a single decision on its
  address's subject).
"""


if __name__ == "__main__":
    sys.exit(main())
