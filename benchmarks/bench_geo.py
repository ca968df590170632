"""Country-set benchmarks: a 300,000-prefix GeoIP database in the kernel.

Owns: a synthetic MaxMind DB (300,000 non-adjacent IPv4 /24s and 6,000 IPv6 /48s over 200
countries; written with mmdb-writer, a dev dependency, cached under /tmp by its size — never
committed), and, in `afwb-` namespaces, all in one run so the ratios hold:

- reading the database (one walk, merged ranges per country);
- loading every country's ranges into interval sets through the netlink element writer
  (flush + add, one transaction: what the daemon's first fill sends) vs `nft -f` of the
  same ranges into the same sets in a fresh namespace;
- a refresh that changes 1% of the ranges (delta: deletes and adds, one transaction);
- the real daemon blocking all 200 countries vs the same daemon without `geoip:`: single
  ban over the socket (kept-alive connection) p50, and RSS after loading vs idle.

Writes docs/benchmarks-geo.md. Run: `sudo .venv/bin/python -m benchmarks.bench_geo [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aitherfwd.adapters.elementwriter import ElementWriter
from aitherfwd.adapters.geodb import read_countries
from aitherfwd.daemon.geosets import _elements
from aitherfwd.geo.ranges import PrefixSet, Ranges, delta
from aitherfwd.nft import builders as b
from benchmarks import doc
from benchmarks.bench_daemon import KeepAlive, start_daemon
from benchmarks.netns import REPO, namespace
from benchmarks.stats import Summary, measure
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.geodata import synthetic_prefixes, write_db

OUT = REPO / "docs" / "benchmarks-geo.md"
PREFIXES = 300_000


def database(count: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"afwb-geo-{count}.mmdb"
    if not path.exists():
        write_db(path.with_suffix(".tmp"), synthetic_prefixes(count))
        path.with_suffix(".tmp").rename(path)
    return path


def _table(sets: list[tuple[str, int]]) -> str:
    lines = ["add table inet aitherfwd"]
    for name, fam in sets:
        lines.append(f"add set inet aitherfwd {name} {{ type ipv{fam}_addr; flags interval; }}")
    return "\n".join(lines) + "\n"


def _commands(countries: dict[str, PrefixSet], *, flush: bool) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for code, prefixes in sorted(countries.items()):
        for fam in (4, 6):
            name, ranges = f"geo_{code.lower()}_v{fam}", prefixes.family(fam)
            if flush:
                out.append(
                    {"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": name}}}
                )
            if len(ranges):
                out.append(b.add(b.element(name, _elements(fam, ranges.pairs()))))
    return out


def _nft_file(countries: dict[str, PrefixSet]) -> str:
    lines = []
    for code, prefixes in sorted(countries.items()):
        for fam in (4, 6):
            elems = [
                f"{a}-{z}"
                for a, z in (e["range"] for e in _elements(fam, prefixes.family(fam).pairs()))
            ]
            if elems:
                lines.append(
                    f"add element inet aitherfwd geo_{code.lower()}_v{fam} {{ {', '.join(elems)} }}"
                )
    return "\n".join(lines) + "\n"


def _netlink_load(
    ns: str,
    countries: dict[str, PrefixSet],
    sets: list[tuple[str, int]],
    *,
    netlink: list[float],
    refresh: list[float],
    kernel_part: list[float],
) -> None:
    """In `ns` (tables made): the full load by the element writer, then a 1% refresh."""
    with inside(ns):
        writer = ElementWriter()
        for name, fam in sets:
            writer.learn(name, f"ipv{fam}_addr", ["interval"])
        started = time.perf_counter_ns()
        writer.run(_commands(countries, flush=True))
        netlink.append((time.perf_counter_ns() - started) / 1e6)
        # 1%: every 100th IPv4 range of each set moves up by one /24 (deleted, added)
        changed: dict[str, Ranges] = {}
        for code, p in countries.items():
            pairs = list(p.v4.pairs())
            kept = [r for i, r in enumerate(pairs) if i % 100 != 50]
            moved = [(r[0] + 256, r[1] + 256) for i, r in enumerate(pairs) if i % 100 == 50]
            changed[code] = Ranges.of(4, kept + moved)
        started = time.perf_counter_ns()
        cmds: list[dict[str, object]] = []
        for code in sorted(countries):
            name = f"geo_{code.lower()}_v4"
            d = delta(countries[code].v4, changed[code])
            if d.removed:
                cmds.append({"delete": b.element(name, _elements(4, d.removed))})
            if d.added:
                cmds.append(b.add(b.element(name, _elements(4, d.added))))
        built = time.perf_counter_ns()
        writer.run(cmds)
        refresh.append((time.perf_counter_ns() - started) / 1e6)
        kernel_part.append((time.perf_counter_ns() - built) / 1e6)
        writer.close()


def kernel_rows(db: Path, reps: int) -> list[doc.Row]:
    rows: list[doc.Row] = []
    read_ms: list[float] = []
    countries: dict[str, PrefixSet] = {}
    for _ in range(reps):
        started = time.perf_counter_ns()
        countries = read_countries(db)
        read_ms.append((time.perf_counter_ns() - started) / 1e6)
    total = sum(len(p) for p in countries.values())
    rows.append(
        (
            f"read the database ({total:,} merged ranges, 200 countries)",
            Summary.of(read_ms),
            "ms",
            "",
        )
    )
    sets = [(f"geo_{c.lower()}_v{f}", f) for c in sorted(countries) for f in (4, 6)]
    setup = _table(sets)
    netlink: list[float] = []
    nft_f: list[float] = []
    refresh: list[float] = []
    kernel_part: list[float] = []
    with tempfile.TemporaryDirectory(prefix="afwb-g-") as tmp:
        nft_path = Path(tmp) / "geo.nft"
        nft_path.write_text(_nft_file(countries))
        setup_path = Path(tmp) / "setup.nft"
        setup_path.write_text(setup)
        for _ in range(reps):
            with namespace() as ns:
                subprocess.run(
                    ["ip", "netns", "exec", ns, "nft", "-f", str(setup_path)], check=True
                )
                started = time.perf_counter_ns()
                subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(nft_path)], check=True)
                nft_f.append((time.perf_counter_ns() - started) / 1e6)
            with namespace() as ns:
                subprocess.run(
                    ["ip", "netns", "exec", ns, "nft", "-f", str(setup_path)], check=True
                )
                _netlink_load(
                    ns, countries, sets, netlink=netlink, refresh=refresh, kernel_part=kernel_part
                )
    rows.append(
        (
            "load every range by the netlink writer (flush + add, one transaction)",
            Summary.of(netlink),
            "ms",
            "<= 1.5x nft -f",
        )
    )
    rows.append(
        ("baseline: `nft -f` of the same ranges into the same sets", Summary.of(nft_f), "ms", "")
    )
    rows.append(
        (
            "refresh changing 1% of the IPv4 ranges (delta, one transaction)",
            Summary.of(refresh),
            "ms",
            "<= 500 ms",
        )
    )
    rows.append(
        (
            "of which the kernel transaction (encode, send, acks)",
            Summary.of(kernel_part),
            "ms",
            "",
        )
    )
    return rows


POLICY = """\
version: 1
settings: {{default_policy: deny, admin_ports: [22]}}
{geo}
rules:
  - {{name: ssh, dest_ports: [22], protocol: tcp, action: allow}}
"""


@contextmanager
def _ban_daemon(geo: str) -> Iterator[tuple[DaemonProc, float]]:
    """The daemon, once every range is in the kernel; and the seconds that took from the
    start of the process (read + load)."""
    with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-g-") as tmp:
        started = time.perf_counter()
        d = start_daemon(ns, Path(tmp), POLICY.format(geo=geo))
        try:
            if geo:
                until(
                    lambda: sum(d.ok("GET", "/v1/status")["geo"]["sets"].values()) >= PREFIXES,
                    120,
                    "database loaded",
                    interval=0.1,
                )
            yield d, time.perf_counter() - started
        finally:
            d.cleanup()


def daemon_rows(db: Path, reps: int) -> list[doc.Row]:
    """Both daemons alive at once; bans sent to each in turns (50 at a time), so the
    machine's load falls on both alike."""
    codes = sorted(read_countries(db))
    geo = f"geoip: {{database: {db}, block_countries: [{', '.join(codes)}]}}"
    bare: list[float] = []
    loaded: list[float] = []
    with _ban_daemon("") as (plain, _), _ban_daemon(geo) as (with_db, seconds):
        time.sleep(1)
        idle, rss = plain.rss_mb(), with_db.rss_mb()
        sockets = {id(bare): plain.socket, id(loaded): with_db.socket}
        bodies = [
            json.dumps({"address": f"10.78.{i >> 8 & 255}.{i & 255}", "ttl": "1h"}).encode()
            for i in range(reps + 100)
        ]
        for r in range(max(1, reps // 50)):
            for out in (bare, loaded) if r % 2 == 0 else (loaded, bare):
                conn, base = KeepAlive(sockets[id(out)]), 50 * r + 1
                try:  # a fresh connection per turn: the other turn may outlast its idle limit
                    out.extend(
                        measure(lambda i, c=conn, k=base: c.post(b"/v1/blocks", bodies[k + i]), 50)
                    )
                finally:
                    conn.close()
    return [
        ("single ban over the socket, no database", Summary.of(bare), "ms", "p50 <= 1 ms"),
        (
            f"single ban over the socket, {PREFIXES:,}-prefix database loaded",
            Summary.of(loaded),
            "ms",
            "p50 <= 1 ms, as without",
        ),
        ("daemon RSS idle, no database", Summary.of([idle]), "MB", ""),
        (
            "daemon RSS with the database loaded, over the idle daemon without it",
            Summary.of([rss - idle]),
            "MB",
            "<= 60 MB",
        ),
        (
            "daemon process start to every range in the kernel (start, read, load)",
            Summary.of([seconds * 1000]),
            "ms",
            "",
        ),
    ]


RATE_POLICY = """\
version: 1
settings: {{default_policy: deny, syn_flood_threshold: 0, max_connections_per_ip: 0}}
{geo}
rules:
  - {{name: web, dest_ports: [443], protocol: tcp, action: allow}}
"""


@contextmanager
def _rate_lab(geo: str) -> Iterator[Callable[[], float]]:
    """A lab and a daemon; yields a sampler: new TCP connections per second from one client
    through the daemon's table (1,000 sequential connects, each a new conntrack entry
    judged by the input chain)."""
    with Lab(clients_wanted=1) as lab, tempfile.TemporaryDirectory(prefix="afwb-g-") as tmp:
        lab.listen([443])
        d = DaemonProc(lab.server, Path(tmp), RATE_POLICY.format(geo=geo), quiet=True)
        d.start(deadline_s=60)
        try:
            if geo:
                until(
                    lambda: sum(d.ok("GET", "/v1/status")["geo"]["sets"].values()) >= PREFIXES,
                    120,
                    "database loaded",
                    interval=0.2,
                )
            (client,) = lab.clients

            def sample() -> float:
                started = time.perf_counter()
                results = lab.probe(client, client.server_v4, 443, count=1000, timeout=1.0)
                return results.count("ok") / (time.perf_counter() - started)

            yield sample
        finally:
            d.cleanup()


def rate_rows(db: Path, rounds: int) -> list[doc.Row]:
    """Both daemons alive at once and sampled in turns, so the machine's load falls on both."""
    codes = sorted(read_countries(db))
    geo = f"geoip: {{database: {db}, block_countries: [{', '.join(codes)}]}}"
    bare: list[float] = []
    loaded: list[float] = []
    with _rate_lab("") as without, _rate_lab(geo) as with_db:
        for r in range(rounds):  # alternating which goes first
            if r % 2:
                loaded.append(with_db())
                bare.append(without())
            else:
                bare.append(without())
                loaded.append(with_db())
    ratio = Summary.of(loaded).p50 / Summary.of(bare).p50
    return [
        ("new connections per second, no database", Summary.of(bare), "conn/s", ""),
        (
            f"new connections per second, {PREFIXES:,} prefixes of 200 blocked countries "
            f"loaded (ratio {ratio:.2f})",
            Summary.of(loaded),
            "conn/s",
            ">= 95% of without",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    db = database(PREFIXES)
    reps = 1 if args.quick else 3
    rows = kernel_rows(db, reps) + daemon_rows(db, 50 if args.quick else 300)
    rows += rate_rows(db, 3 if args.quick else 7)
    command = "sudo .venv/bin/python -m benchmarks.bench_geo" + (" --quick" if args.quick else "")
    text = doc.table("Country-set benchmarks", rows, command)
    print(text)
    if not args.quick:
        OUT.write_text(text + "\n" + NOTES)
    print(json.dumps({"ok": True}), file=sys.stderr)
    return 0


NOTES = """\
What the numbers say. Three runs on 2026-12-05 (13:07 and 13:08 UTC at load 2.2-3.4, 13:46 at
load 0.7-1.3) met every target; one at 13:09 while another engineer's benchmark ran (load
3.3) did not (single ban p50 1.2-1.3 ms, connection rate ratio 0.68), nor did runs earlier
that day at load 5-15 (kept below, for what moves with load):
- Load: the first fill (flush + every range, one transaction through the netlink element
  writer, ranges encoded straight from their integers) takes 0.26-0.42x the time of `nft -f`
  of the same ranges into the same sets (target <= 1.5x), at every load measured. Reading
  the database (a walk of its search tree, 306,000 networks) costs about as much again;
  the daemon does it off the event loop.
- A refresh that moves 1% of the IPv4 ranges (3,000 deleted, 3,000 added, over 200 sets):
  73 ms end to end at load 2-3, of which the kernel transaction is 50 ms. The delta walks
  both sorted sequences but skips the stretches where they agree a slice at a time
  (geo/ranges.py `delta`: 130 -> 55 ms of Python for this change); before that, 0.31-0.54 s
  at load 5-15.
- Single ban: 0.75-0.83 ms p50 with the database, 0.75-0.83 without, sampled in turns (target
  <= 1 ms, the same as without). The ban goes by netlink into a hash set: no libnftables
  cache of the interval sets is ever built, and since issue 15 a small element batch is
  written from the event loop without a thread hand-off. At load 11-15 the p50 was 1.5-7 ms
  for both alike.
- RSS: 14-23 MB over the idle daemon after loading (target <= 60 MB): the database is read
  into packed arrays, the kernel gets its elements from a lazy sequence, only the
  blocked/used countries are kept, as flat arrays of range bounds.
- New-connection rate with all 200 countries blocked: 1.00-1.05 of the rate without at load
  2-3 (7 alternating samples of 1,000 connections each); 0.75-1.04 at load 11-15, where
  single samples spread 2-5x. The blocked countries are one union set per family, checked
  after the established accept, so a new connection costs one interval-set lookup more.
"""


if __name__ == "__main__":
    raise SystemExit(main())
