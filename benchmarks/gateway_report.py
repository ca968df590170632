"""docs/benchmarks-gateway.md from the runs of `benchmarks.bench_gateway` (pure text).

Owns: the document's generated part — the command, the machine, the HTTP stack it measured
(versions and where they were imported from: the .deb runs on Debian's packages), one row
per run with the 1-minute load average before and after it and the ratios to the reference
measured in that run, the medians over the runs, the in-process evaluate — and keeping the
hand-written notes below `NOTES` in the existing document.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path

GATEWAY, FLOOR, REFERENCE = "aitherfwd gateway", "uvicorn floor (constant answer)", "reference (Go)"
NOTES = "<!-- notes below are kept by benchmarks.bench_gateway -->"
P50_TARGET, RPS_TARGET = 3.0, 1 / 3

Results = dict[str, dict[str, float]]  # server → p50, p99 (µs), rps


@dataclass(frozen=True)
class Run:
    load_before: float
    load_after: float
    results: Results

    def ratio(self, name: str, key: str) -> float:
        return self.results[name][key] / self.results[REFERENCE][key]


def stack(loop: str) -> str:
    """The HTTP stack this process imports (the gateway's subprocess imports the same)."""
    parts = []
    for name in ("uvicorn", "starlette", "h11", "uvloop"):
        try:
            mod = import_module(name)
        except ImportError:
            continue
        where = str(Path(mod.__file__ or "?").parent.parent)
        parts.append(f"{name} {getattr(mod, '__version__', '?')} ({where})")
    return f"loop `{loop}`, http `h11`; " + ", ".join(parts)


def _median(runs: Sequence[Run], name: str, key: str) -> float:
    return statistics.median(r.results[name][key] for r in runs)


def _ratios(runs: Sequence[Run], name: str, key: str) -> tuple[float, float, float]:
    values = [r.ratio(name, key) for r in runs]
    return statistics.median(values), min(values), max(values)


def report(
    runs: Sequence[Run], inproc: tuple[float, float], command: str, loop: str, *, pinned: bool
) -> str:
    now = datetime.now(UTC)
    lines = [
        "# Benchmarks: the tool-call gateway",
        "",
        f"- Command: `{command}`, {now:%Y-%m-%d %H:%M} UTC; {len(runs)} run(s), one after "
        "the other, each the medians of 3 rounds alternating the servers.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()} ({sys.prefix}). Shared with other engineers' test runs: "
        "the 1-minute load average before and after each run is in its row. Absolute figures "
        "move with the load; the ratio to the reference, measured in the same run, is what "
        "counts.",
        f"- HTTP stack measured: {stack(loop)}.",
        "- Load: a 50-tool policy (45 allowed with argument rules, 5 denied); every call "
        "`tool.25` with one string parameter, allowed; both servers write their audit line "
        "per decision. Clients: Python `http.client`, one kept-alive connection each; latency "
        "with one client, throughput with 8 client processes on the same 2 cores as the "
        "servers."
        + (
            " Latency pinned (`--pin`): the client on CPU 0 and the server measured on CPU 1, "
            "every server alike; throughput unpinned."
            if pinned
            else ""
        ),
        "",
    ]
    has_ref = all(REFERENCE in r.results for r in runs)
    if has_ref:
        lines += [
            "| run | load before → after | gateway p50 | reference p50 | p50 ratio (≤ 3x) "
            "| gateway /s | reference /s | throughput ratio (≥ 0.33x) | floor p50 ratio "
            "| floor /s ratio |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(runs, 1):
            g, ref = r.results[GATEWAY], r.results[REFERENCE]
            lines.append(
                f"| {i} | {r.load_before:.1f} → {r.load_after:.1f} | {g['p50']:.0f} µs "
                f"| {ref['p50']:.0f} µs | {r.ratio(GATEWAY, 'p50'):.2f}x | {g['rps']:,.0f} "
                f"| {ref['rps']:,.0f} | {r.ratio(GATEWAY, 'rps'):.2f}x "
                f"| {r.ratio(FLOOR, 'p50'):.2f}x | {r.ratio(FLOOR, 'rps'):.2f}x |"
            )
        p50, p50_lo, p50_hi = _ratios(runs, GATEWAY, "p50")
        rps, rps_lo, rps_hi = _ratios(runs, GATEWAY, "rps")
        met = sum(
            r.ratio(GATEWAY, "p50") <= P50_TARGET and r.ratio(GATEWAY, "rps") >= RPS_TARGET
            for r in runs
        )
        lines += [
            "",
            f"Gateway / reference over the runs: p50 median {p50:.2f}x (range {p50_lo:.2f}x to "
            f"{p50_hi:.2f}x; target ≤ 3x), throughput median {rps:.2f}x (range {rps_lo:.2f}x "
            f"to {rps_hi:.2f}x; target ≥ 0.33x). Both targets met in {met} of {len(runs)} "
            "runs.",
            "",
        ]
    lines += [
        "Medians over the runs:",
        "",
        "| server | p50 latency | p99 latency | decisions/s (8 clients) |",
        "|---|---:|---:|---:|",
    ]
    for name in runs[0].results:
        lines.append(
            f"| {name} | {_median(runs, name, 'p50'):.0f} µs | {_median(runs, name, 'p99'):.0f} "
            f"µs | {_median(runs, name, 'rps'):,.0f} |"
        )
    lines += [
        "",
        f"In-process evaluate (no HTTP): p50 {inproc[0]:.1f} µs, p99 {inproc[1]:.1f} µs "
        "(target p50 ≤ 10 µs).",
        "",
    ]
    return "\n".join(lines)


def with_notes(generated: str, previous: str) -> str:
    """The generated part, then the notes the previous document kept below `NOTES`."""
    _, found, notes = previous.partition(NOTES)
    return generated + (f"\n{NOTES}{notes}" if found else "")
