"""Daemon benchmarks: the control socket's latency and throughput, and the daemon's RSS.

Owns: starting the real daemon (`aitherfwd run`) in an `afwb-` namespace with policies in a
temporary directory, then timing from the root namespace over its Unix socket — a single
block until the kernel accepted it, 100,000 blocks in one request (baseline: `nft -f` of the
same elements into the same set, in another namespace, same run), evaluate over the socket
and in-process with a 1,000-rule policy — and reading its idle RSS. Writes
docs/benchmarks-daemon.md. Run: `sudo .venv/bin/python -m benchmarks.bench_daemon [--quick]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aitherfwd.compiler import compile_policy
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.policy.model import Protocol
from aitherfwd.policy.parse import parse_policy
from benchmarks import doc
from benchmarks.netns import REPO, namespace
from benchmarks.policygen import generate_policy
from benchmarks.stats import Summary, measure
from lab.daemon import DaemonProc

OUT = REPO / "docs" / "benchmarks-daemon.md"


def start_daemon(ns: str, workdir: Path, policy_text: str) -> DaemonProc:
    """The real daemon for a benchmark (lab/daemon.py): output discarded, slow requests
    (100,000 blocks in one) allowed; `cleanup()` kills it."""
    daemon = DaemonProc(ns, workdir, policy_text, quiet=True, client_timeout=120)
    return daemon.start(deadline_s=60)


class KeepAlive:
    """A raw HTTP/1.1 client on one kept-alive connection: measures the daemon, not
    http.client's per-request connection set-up."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""

    def post(self, target: bytes, body: bytes) -> bytes:
        self.sock.sendall(
            b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return rest[:length]

    def close(self) -> None:
        self.sock.close()


def _addresses(count: int, base: int) -> list[str]:
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


WARM = 100  # bans before the single-ban samples: a running daemon's state, not its first
GAP = 0.01  # seconds between the bans of the idle row


def _bulk_body(addresses: list[str]) -> bytes:
    """A 100,000-ban request's body, encoded before the timing (the client's JSON encoding
    is not the daemon's work, as `nft -f`'s file is written before its timing)."""
    return json.dumps({"blocks": [{"address": a, "ttl": "1h"} for a in addresses]}).encode()


def _ok(answer: bytes) -> None:
    if not answer.startswith(b'{"count":'):
        raise RuntimeError(f"the daemon refused the bans: {answer[:200]!r}")


def nft_f_baseline(addresses: list[str], reps: int) -> list[float]:
    """`nft -f` of the same elements into the same kind of set, a fresh namespace each time."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "elements.nft"
        setup = "add table inet b\nadd set inet b block_v4 { type ipv4_addr; flags timeout; }\n"
        path.write_text(
            "add element inet b block_v4 { "
            + ", ".join(f"{a} timeout 3600s" for a in addresses)
            + " }\n"
        )
        for _ in range(reps):
            with namespace() as ns:
                subprocess.run(["ip", "netns", "exec", ns, "nft", setup], check=True)
                started = time.perf_counter_ns()
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(path)], check=True)
                samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def run(quick: bool) -> list[tuple[str, Summary, str, str]]:
    rows: list[tuple[str, Summary, str, str]] = []
    big_policy = generate_policy(1000)
    default = (REPO / "policies" / "default.yaml").read_text()
    reps = 50 if quick else 300
    # evaluate first: tearing down a namespace that held 400,000 set elements keeps the
    # kernel busy for seconds afterwards, which would be measured as socket latency
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-d-") as tmp:
        d = start_daemon(ns, Path(tmp), big_policy)
        try:
            req = {"source_ip": "203.0.113.9", "dest_port": 443, "protocol": "tcp"}
            samples = measure(lambda i: d.post("/v1/evaluate", req), reps)
            rows.append(
                (
                    "evaluate over the socket, 1,000-rule policy (new connection each, "
                    "Python http.client)",
                    Summary.of(samples),
                    "ms",
                    "",
                )
            )
            conn = KeepAlive(d.socket)
            body = json.dumps(req).encode()
            samples = measure(lambda i: conn.post(b"/v1/evaluate", body), reps * 4, warmup=20)
            rows.append(
                (
                    "evaluate over the socket, 1,000-rule policy (kept-alive connection)",
                    Summary.of(samples),
                    "ms",
                    "p50 ≤ 0.3 ms",
                )
            )
            conn.close()
        finally:
            d.cleanup()
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-d-") as tmp:
        d = start_daemon(ns, Path(tmp), default)
        try:
            time.sleep(2)
            rows.append(
                (
                    "daemon RSS, idle after start (default policy)",
                    Summary.of([d.rss_mb()]),
                    "MB",
                    "≤ 45 MB",
                )
            )
            singles = _addresses(reps + 5, 0x0A4D0000)
            samples = measure(
                lambda i: d.post("/v1/blocks", {"address": singles[i + 5], "ttl": "1h"}), reps
            )
            rows.append(
                (
                    "single block over the socket, until the kernel accepted it "
                    "(new connection each, Python http.client)",
                    Summary.of(samples),
                    "ms",
                    "",
                )
            )
            conn = KeepAlive(d.socket)
            more = _addresses(WARM + 2 * reps, 0x0A4E0000)  # i runs from -WARM (the warm-up)
            bodies = [json.dumps({"address": a, "ttl": "1h"}).encode() for a in more]
            samples = measure(
                lambda i: conn.post(b"/v1/blocks", bodies[WARM + i]),
                reps,
                warmup=WARM,
                collect=False,
            )
            rows.append(
                (
                    f"single block over the socket, until the kernel accepted it "
                    f"(kept-alive connection, back to back, after {WARM} to warm up)",
                    Summary.of(samples),
                    "ms",
                    "p50 ≤ 0.5 ms",
                )
            )
            samples = measure(
                lambda i: conn.post(b"/v1/blocks", bodies[WARM + reps + i]),
                reps,
                warmup=0,
                setup=lambda i: time.sleep(GAP),
                collect=False,
            )
            rows.append(
                (
                    f"the same, one ban every {GAP * 1000:.0f} ms (the daemon idles "
                    "between bans: its CPU wakes for each)",
                    Summary.of(samples),
                    "ms",
                    "",
                )
            )
            n = 1 if quick else 3
            fresh: list[float] = []
            for r in range(n):  # new addresses each time: elements the kernel does not have
                addrs = _addresses(100_000, 0x0B000000 + (r + 1) * 0x00200000)
                body = _bulk_body(addrs)
                d.client.request("GET", "/v1/health")
                started = time.perf_counter_ns()
                _ok(conn.post(b"/v1/blocks", body))
                fresh.append((time.perf_counter_ns() - started) / 1e6)
            rows.append(
                (
                    "100,000 new blocks in one request (kept-alive connection, body encoded "
                    "before the timing)",
                    Summary.of(fresh),
                    "ms",
                    "≤ 1.0x `nft -f`",
                )
            )
            bulk = _addresses(100_000, 0x0B000000)
            body = _bulk_body(bulk)
            _ok(conn.post(b"/v1/blocks", body))
            samples = []
            for _ in range(n):
                d.client.request("GET", "/v1/health")
                started = time.perf_counter_ns()
                _ok(conn.post(b"/v1/blocks", body))
                samples.append((time.perf_counter_ns() - started) / 1e6)
            conn.close()
            rows.append(
                (
                    "the same 100,000 blocked again (re-block with a new timeout, in one "
                    "transaction; one add each where the kernel updates timeouts in place)",
                    Summary.of(samples),
                    "ms",
                    "",
                )
            )
            base = nft_f_baseline(bulk, n)
            rows.append(
                ("baseline: `nft -f` of the same 100,000 elements", Summary.of(base), "ms", "")
            )
            nft = Summary.of(base).p50
            for what, timed in (("100,000 new blocks", fresh), ("the re-block", samples)):
                ratio = Summary.of([t / nft for t in timed])
                rows.append(
                    (f"{what} ÷ `nft -f` (p50 of each run over its p50)", ratio, "x", "≤ 1.0x")
                )
            rows.append(
                (
                    f"daemon RSS with {(n + 1) * 100_000:,} active blocks",
                    Summary.of([d.rss_mb()]),
                    "MB",
                    "",
                )
            )
        finally:
            d.cleanup()
    rows.append(rss_after_one_request(default))
    policy = parse_policy(big_policy, "gen1000.yaml").policy
    assert policy is not None
    compile_policy(policy)
    ev = Evaluator(policy)
    requests = [
        Request(
            ipaddress.ip_address(f"203.0.{i % 256}.{i // 256 % 256}"),
            Protocol.TCP,
            1 + (i * 7919) % 65535,
        )
        for i in range(2000)
    ]

    def batch(i: int) -> None:  # 1,000 calls per sample: a single call is below timer noise
        for k in range(1000):
            ev.evaluate(requests[(i * 1000 + k) % 2000], 1.7e9)

    samples = [ms / 1000 for ms in measure(batch, 50, warmup=2)]
    rows.append(
        (
            "evaluate in-process, 1,000-rule policy (varied sources and ports), per call",
            Summary.of(samples),
            "ms",
            "p50 ≤ 0.02 ms",
        )
    )
    return rows


def rss_after_one_request(policy_text: str) -> tuple[str, Summary, str, str]:
    """A fresh daemon, one request of 100,000 bans, then its RSS (a second later: the
    request has been answered and the heap trimmed)."""
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-d-") as tmp:
        d = start_daemon(ns, Path(tmp), policy_text)
        try:
            conn = KeepAlive(d.socket)
            _ok(conn.post(b"/v1/blocks", _bulk_body(_addresses(100_000, 0x0B000000))))
            conn.close()
            time.sleep(1)
            rss = d.rss_mb()
        finally:
            d.cleanup()
    return (
        "daemon RSS holding 100,000 bans, after one 100,000-ban request (fresh daemon)",
        Summary.of([rss]),
        "MB",
        "≤ 50 MB",
    )


def render(rows: list[tuple[str, Summary, str, str]], command: str) -> str:
    return doc.table("Daemon benchmarks", rows, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    text = render(
        rows,
        "sudo .venv/bin/python -m benchmarks.bench_daemon" + (" --quick" if args.quick else ""),
    )
    print(text)
    if not args.quick:
        OUT.write_text(text + "\n" + NOTES)
    print(json.dumps({"ok": True}), file=sys.stderr)
    return 0


NOTES = """\
What the numbers say:
- A single ban reaches the kernel in 0.5-0.7 ms: parse, SQLite commit (the source of truth),
  one nfnetlink batch of our own (since issue 15 element writes are NEWSETELEM batches,
  acked — adapters/nftelements.py; libnftables only applies the ruleset), the audit line.
  Since 2026-12-05 13:00 a batch of at most 64 element changes is written from the event
  loop instead of the writer's thread (two thread hand-offs saved): p50 0.74 -> 0.51 ms and
  daemon CPU per ban 0.75 -> 0.55 ms in a same-load comparison (2,000 bans on a warm daemon,
  load 5); 0.42-0.47 ms p50 at load 2. This benchmark's 300 bans right after the start
  measure 0.69 ms: the ≤ 0.5 ms target of issue 15 holds on a warm daemon only. What is
  left per ban: the conntrack cut each ban queues to a worker thread (≈ 10 % of the
  latency, measured by turning it off), h11's parsing and the socket's own syscalls.
  fail2ban needs ≈ 10.5 ms per ban through its socket (105 s for 10,000) and 129 ms
  through fail2ban-client; CrowdSec's bouncer ≈ 40 decisions/s (ANCHORS.md).
- 100,000 new bans in one request are one kernel transaction, inside the 2 s target but
  ≈ 5x `nft -f`. Since issue 15 the kernel part is our own nfnetlink batch (≈ 0.2 s, 0.7x
  `nft -f`: docs/benchmarks-writer.md), so what is left is the daemon's own work: the JSON
  decode and per-address validation, the overlap and protection checks, the SQLite commit
  and the audit line. The ≤ 1.0x `nft -f` target of issue 15 is not met here; each of those
  steps needs its own measurement and fix.
- Blocking the same 100,000 again: this kernel updates a timeout on a plain add (probed at
  the start), so the kernel part is one add per element (0.43x `nft -f` at the writer); the
  row above still shows the daemon's own work on the request.
- RSS: a block costs ≈ 80-90 bytes in the table (a packed int key to a record shared by
  its whole request, one expiry heap; tests/unit/test_block_table_compact.py measures it
  with tracemalloc), so 100,000 bans are ≈ 9 MB of it. The rest of the RSS after a ban
  request is the interpreter (≈ 39 MB idle) and heap pages the request's JSON leaves
  partly used (until issue 15's conntrack slice, also pyroute2, which the first ban
  imported for its conntrack cut: see the conntrack bullet below). Python's
  allocator can only give an arena back when every object in it is gone, and the keys the
  table keeps are made while the request's objects are alive. The writer no longer holds
  the last batch's JSON while idle (35 MB at 100,000), the table makes a request's keys in
  a pass of their own, and the heap is trimmed once more after the request is answered.
  Before the compact table (main at 43e8cd5, same machine and day, one run each): 120.9 MB
  after one 100,000-ban request, then ≈ 69-73 MB with pyroute2, ≈ 64-66 MB without it.
  The ≤ 50 MB target is not met: its floor here is 38.6 (idle) + 9 (the table) ≈ 48 MB, and
  the remaining ≈ 16 MB are allocator pages pinned by the request (sys._debugmallocstats:
  ~10 MB of empty pools in arenas that still hold a few live objects).
- Conntrack without pyroute2 (issue 15): the cut after a ban and the anti-lockout query are
  our own ctnetlink dumps and deletes (adapters/ctquery.py, one reused socket per worker
  thread). `sudo .venv/bin/python -m benchmarks.bench_conntrack --before DIR` measures them
  against another tree in the same run (DIR = main at d229e75, with pyroute2), alternating
  fresh daemons; run on a machine loaded by other engineers' tests (load average 8-14 on 2
  cores), so only the ratios mean anything and the wall times none. Per-round ratios, this
  tree / main:
  - user CPU of one cut (an address without entries, 2,000 other entries in the table):
    0.10-0.24 (IPv4), 0.16-0.31 (IPv6); of one anti-lockout query: 0.15-0.16 (≈ 0.1-0.2 ms
    against 0.55-1.1 ms with pyroute2);
  - the daemon's user CPU per single ban, its cut included (200 bans, 4 rounds):
    0.54-0.85 (2.35 → 1.73 ms, median); an earlier run of the same: 0.52-0.64
    (2.25 → 1.33 ms). User + system: 0.77-1.18, because most of the system time is the
    kernel walking its whole conntrack hash for each filtered dump (262,144 buckets here,
    ≈ 3 ms, the same for both);
  - RSS after 200 single bans: 0.80 every round (48.2 → 38.8 MB: pyroute2's import is the
    difference); after one 100,000-ban request (`bench_daemon --quick`, twice each way):
    68.1 / 69.4 → 65.5 / 64.1 MB;
  - single-ban latency: not comparable under that load (p50 of 200 bans 1-20 ms both ways,
    round to round); the target of ≤ 0.5 ms needs a quiet machine to check.
- The cut still costs one walk of the kernel's conntrack hash per ban (the kernel has no
  lookup by source). The daemon's conntrack accounting (adapters/ctnetlink.py events)
  already knows whether a source holds any entry; skipping the cut when it holds none
  would remove that walk for most bans — not done yet.
- The kernel's IPv6 address filter for conntrack dumps is inverted (it returns every
  source except the one asked for; IPv4 is correct), so the IPv6 cut dumps the IPv6 table
  and matches the source in the daemon: its cost follows the IPv6 conntrack table. Entries
  are checked against the filter for both families, so no kernel answer can make a cut
  delete another source's connections.
- Evaluate is microseconds in-process (an indexed evaluator: two bisects and a bit mask,
  not a walk over 1,000 rules); over a kept-alive socket the HTTP layer (h11 + asyncio)
  brings it to ≈ 0.2 ms. The evaluate rows run first: tearing down a namespace that held
  400,000 elements keeps the kernel busy for seconds and showed up as 3x the latency.
- Idle RSS stays under 45 MB, and no ban or reload adds pyroute2 to it any more.
"""

if __name__ == "__main__":
    sys.exit(main())
