"""The header and table that every per-topic benchmark document starts with.

Owns: the command line, the date, the machine (cores, kernel, Python) and its load average
when the run ended, and the `measurement | n | p50 | p90 | unit | target` table.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

from benchmarks.stats import Summary

Row = tuple[str, Summary, str, str]  # measurement, summary, unit, target


def header(title: str, command: str) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"# {title}",
        "",
        f"- Command: `{command}` (as root), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {os.cpu_count()} cores, kernel `{platform.release()}`, Python "
        f"{platform.python_version()}; load average at the end {load} (above ~0.5 other work "
        "shared the machine: absolute times move, the ratios hold better)",
        "",
    ]


def table(title: str, rows: list[Row], command: str) -> str:
    lines = [
        *header(title, command),
        "| measurement | n | p50 | p90 | unit | target |",
        "|---|--:|--:|--:|---|---|",
    ]
    for name, s, unit, target in rows:
        lines.append(f"| {name} | {s.n} | {s.p50:,.3f} | {s.p90:,.3f} | {unit} | {target} |")
    return "\n".join(lines) + "\n"
