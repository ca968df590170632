"""Persistence and reputation benchmarks: restoring persisted blocks after a "reboot",
threat-event ingestion over the socket, and the daemon's RSS holding 100,000 blocks.

Owns: writing N blocks into a state store, starting the real daemon (`aitherfwd run`) in a
fresh `afwb-` namespace with no table (what a reboot leaves) and timing the restore — the
daemon's own `start_seconds` (store load + the kernel transactions) and the wall time from
spawn to a healthy socket — against `nft -f` of the same elements in the same run;
threat events in batches over one kept-alive connection; RSS after the restore. Writes
docs/benchmarks-persistence.md. Run: `sudo .venv/bin/python -m benchmarks.bench_persistence
[--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from aitherfwd.adapters.store import Store
from aitherfwd.dynamic.blocks import Block
from benchmarks import doc
from benchmarks.bench_daemon import KeepAlive, _addresses, nft_f_baseline, start_daemon
from benchmarks.netns import REPO, block_v4_elements, namespace
from benchmarks.stats import Summary

OUT = REPO / "docs" / "benchmarks-persistence.md"
Row = tuple[str, Summary, str, str]


def _seed_store(state: Path, addresses: list[str]) -> None:
    now = time.time()
    store = Store(state)
    expires = now + 3600
    for i in range(0, len(addresses), 100_000):
        chunk = addresses[i : i + 100_000]
        store.save_blocks([Block(a, expires, "bench", "manual", now) for a in chunk])
    store.close()


def _kernel_count(ns: str) -> int:
    return len(block_v4_elements(ns))


def restore(count: int, reps: int, verify: bool) -> list[Row]:
    """Each repetition restores `count` stored blocks in a fresh daemon and, right after,
    runs `nft -f` of the same elements: the ratio of each pair is the figure that counts
    on a machine other work shares."""
    addresses = _addresses(count, 0x0C000000)
    own, wall, rss, base, ratios = [], [], [], [], []
    for _ in range(reps):
        with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-p-") as tmp:
            work = Path(tmp)
            _seed_store(work / "state", addresses)
            started = time.perf_counter_ns()
            d = start_daemon(ns, work, (REPO / "policies" / "default.yaml").read_text())
            try:
                wall.append((time.perf_counter_ns() - started) / 1e6)
                status = d.client.request("GET", "/v1/status")[1]
                if status["elements"]["block_v4"] != count:
                    raise RuntimeError(f"restored {status['elements']} of {count}")
                own.append(status["start_seconds"] * 1000)
                if verify and _kernel_count(ns) != count:
                    raise RuntimeError("the kernel set does not hold every restored block")
                time.sleep(1)
                rss.append(d.rss_mb())
            finally:
                d.cleanup()
        base += nft_f_baseline(addresses, 1)
        ratios.append(own[-1] / base[-1])
    name = f"{count:,}"
    big = count >= 1_000_000
    rows: list[Row] = [
        (
            f"restore {name} persisted blocks: store load + kernel transactions (daemon's "
            "start_seconds: the first 5,000 with the table, then 50,000 per batch, the store "
            "read while the kernel takes the batch before)",
            Summary.of(own),
            "ms",
            "≤ 3,000 ms (issue 15)" if big else "≤ 1,000 ms",
        ),
        (
            f"restore {name}: start_seconds / `nft -f` of the same elements, each pair run "
            "side by side",
            Summary.of(ratios),
            "x",
            "≤ 1.0x (issue 15)" if big else "≤ 1.0x",
        ),
        (
            f"restore {name}: spawn to a healthy control socket (incl. Python start-up)",
            Summary.of(wall),
            "ms",
            "",
        ),
        (f"baseline: `nft -f` of the same {name} elements", Summary.of(base), "ms", ""),
    ]
    bound = "≤ 60 MB" if count <= 100_000 else "≤ 150 MB"
    rows.append((f"daemon RSS holding {name} restored blocks", Summary.of(rss), "MB", bound))
    return rows


def ingestion(batches: int, batch: int) -> list[Row]:
    """Threat events from 10,000 distinct sources, 5 low events each per 50,000: every
    source reaches the threshold once, so the run also makes 10,000 temporary blocks."""
    sources = _addresses(10_000, 0x0D000000)
    rows: list[Row] = []
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-p-") as tmp:
        d = start_daemon(ns, Path(tmp), (REPO / "policies" / "default.yaml").read_text())
        try:
            conn = KeepAlive(d.socket)
            bodies = [
                json.dumps(
                    {
                        "events": [
                            {
                                "type": "SENTRY_PORT_SCAN",
                                "source_ip": sources[(b * batch + k) % len(sources)],
                                "severity": "low",
                            }
                            for k in range(batch)
                        ]
                    }
                ).encode()
                for b in range(batches)
            ]
            per_batch = []
            started = time.perf_counter_ns()
            for body in bodies:
                t0 = time.perf_counter_ns()
                answer = json.loads(conn.post(b"/v1/threats", body))
                if answer.get("accepted") != batch:
                    raise RuntimeError(f"threats refused: {answer}")
                per_batch.append((time.perf_counter_ns() - t0) / 1e6)
            total_s = (time.perf_counter_ns() - started) / 1e9
            conn.close()
            events = batches * batch
            blocked = d.client.request("GET", "/v1/status")[1]["elements"]["block_v4"]
            rows.append(
                (
                    f"threat events over the socket, batches of {batch:,} "
                    f"({events:,} events, {blocked:,} blocks made), events/s",
                    Summary.of([events / total_s]),
                    "events/s",
                    "≥ 20,000 events/s",
                )
            )
            rows.append((f"one batch of {batch:,} threat events", Summary.of(per_batch), "ms", ""))
            rows.append(("daemon RSS after the ingestion run", Summary.of([d.rss_mb()]), "MB", ""))
        finally:
            d.cleanup()
    return rows


def render(rows: list[Row], command: str) -> str:
    return doc.table("Persistence and reputation benchmarks", rows, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = restore(100_000, 1 if args.quick else 5, verify=True)
    if not args.quick:
        rows += restore(1_000_000, 3, verify=False)
    rows += ingestion(10 if args.quick else 50, 1000)
    command = "sudo .venv/bin/python -m benchmarks.bench_persistence" + (
        " --quick" if args.quick else ""
    )
    text = render(rows, command)
    text += "\n- Load average when the run began: " + " ".join(f"{x:.2f}" for x in load_before)
    text += " (2 cores; other engineers' tests and profiling shared the machine)\n"
    print(text)
    if not args.quick:
        OUT.write_text(text + "\n" + NOTES)
    print(json.dumps({"ok": True}), file=sys.stderr)
    return 0


NOTES = """\
What the numbers say:
- A "reboot" (no table in the kernel) restores every persisted block with the table. Since
  issue 15 the cold start reads the store and writes the kernel at the same time
  (daemon/generations.py `_adopt_or_apply`, dynamic/blocks.py `load_batches`,
  daemon/prefetch.py): a thread of its own reads the store's rows as plain tuples
  (`Store.iter_rows`: no `Block` object per row) straight into the compact block table, a
  chunk at a time, and makes that chunk's element adds as it goes (`RestoreParts`: packed
  ints and timeouts, no text, no dict per block); the kernel writer's thread sends each
  chunk by netlink while the next one is read. The kernel's work runs inside sendmsg and
  SQLite's inside sqlite3_step, both without the GIL, so on two cores they overlap with
  the Python work of the other thread. The first chunk, 5,000 blocks
  (`FIRST_RESTORE_BATCH`), still travels in the very transaction that creates the table
  (libnftables' JSON, ~10 µs per element: it was 50,000, ≈ 0.5 s of the start); the rest
  follow at once, 50,000 per netlink batch (`RESTORE_BATCH`). Packed elements are encoded
  in one tight loop per batch (adapters/nftelements.py `_packed_messages`: the same bytes
  and the same message splits as before, 2x faster).
- Before and after, the same machine and hour, interleaved runs (a seeded store,
  `aitherfwd run` in a fresh namespace; main at 1e1b822 against this branch,
  start_seconds, 2 + 2 runs each): 1,000,000 blocks 3.29 / 3.34 / 3.51 / 3.69 s on main,
  1.54 / 1.58 / 1.62 / 1.80 s here (≈ 2.1x faster); 100,000 blocks 0.53-0.59 s on main,
  0.17-0.20 s here (≈ 3x). RSS unchanged (≈ 124 MB holding 1,000,000; 54 MB holding
  100,000). The overlap's own share (the reading thread against the same code reading
  in the writer's thread, interleaved, 1,000,000 blocks): 1.59 / 1.61 / 1.65 / 2.22 s
  with the thread, 1.91 / 1.92 / 2.01 / 2.27 s without (≈ 0.3 s, the kernel's time).
- A run at 15:15 UTC shared the machine with another engineer's daemon profiling and
  tests (load average 1.1 to 2.1 on 2 cores): the 1,000,000 restore took 2.4 s there
  (0.60x `nft -f`); the run above, on a quiet machine (15:48, load 0.5-1.0), 1.6 s and
  0.46x. The ratio to `nft -f`, each pair run side by side, is the figure that holds.
- Threat ingestion: 18,500 events/s at 08:15 (load 2.2), 29,800 at 15:15 on a tree
  without the day's bulk block path, 31,300 in the run above with it: the step is not
  this session's work, and was not traced (the morning's load is one candidate).
- Where the rest goes (py-spy, 1,000,000 blocks): the reading thread is the critical
  path, and SQLite's fetch of the 5 columns is most of it (≈ 0.6 s alone in-process;
  longer in the daemon, where it waits for the GIL while the writer encodes); the table's
  own work is ≈ 0.35 s, the encoding ≈ 0.2 s, the kernel ≈ 0.4 s (overlapped).
- The floor `nft -f` spends most of its time parsing text in user space; the kernel's
  share of a 1,000,000-element restore is ≈ 0.4 s. fail2ban re-bans one by one: 30 to 40
  minutes for 20,000 bans (ANCHORS.md).
- Why batches: libnftables' JSON input slows down superlinearly with the size of one call
  (1,000,000 elements in one call 7.7 s, in ten calls of 100,000 3.5 s), and until that
  one call returned the host would have no table; the netlink batches are bounded the same
  way (a refused batch is reconciled element by element, the rest of the store still read
  into the table: tests/unit/test_cold_start_stream.py).
- RSS holding restored blocks: the rows of one request stay one batch record across the
  load's chunks, and the load ends by moving each large group of IPv4 addresses (1,024 or
  more under one batch, up to 16 groups, the largest first) into a run of the table
  (`LoadingTable.compact`, in the reading thread while the kernel takes the last chunk):
  ≈ 5 bytes a block instead of ≈ 80 in the dict. Holding 1,000,000 restored blocks (one
  request's): 124 MB -> 55 MB since 18:05; 100,000: 54 -> 47 MB. The restore got ≈ 0.1 s
  slower for it (1.62 -> 1.76 s, 0.46x -> 0.48x `nft -f`). Blocks made one by one (many
  small batches) stay in the dict, ≈ 80 bytes each. The rows stream through the reading
  thread one at a time (a chunk is never a list of rows: short-lived row objects between
  the table's ints kept +17 MB of RSS when it was).
- Threat events are validated, scored on the reputation ladder and persisted (offenders
  table) per batch; the blocks they cause go out as one kernel transaction per batch.
"""

if __name__ == "__main__":
    raise SystemExit(main())
