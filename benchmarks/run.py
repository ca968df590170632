"""Entry point: `python -m benchmarks.run [--quick]` (what `make bench` runs, as root).

Owns: the run configuration (repetitions, sizes), running the three cases one after the
other, each in its own namespace, the machine description, the before/after checks (no
`afwb-` namespace left, the root namespace's tables unchanged), printing the Markdown table
and writing docs/benchmarks.md after a full run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import bench_elements, bench_policy, report
from benchmarks.netns import REPO, BenchError, leftover_namespaces
from benchmarks.policygen import generate_policy
from benchmarks.report import ELEMENTS, GEN1000, SEED12, Result, Row, RunConfig

SEED12_POLICY = Path(__file__).resolve().parent / "policies" / "seed12.yaml"
DOCS = REPO / "docs" / "benchmarks.md"
FULL = RunConfig(
    quick=False,
    reps_seed12=50,
    reps_gen1000=15,
    reps_elements=5,
    elements=100_000,
    chunk=10_000,
    gen_rules=1000,
)
QUICK = RunConfig(
    quick=True,
    reps_seed12=10,
    reps_gen1000=3,
    reps_elements=3,
    elements=20_000,
    chunk=10_000,
    gen_rules=1000,
)
TARGETS_MS = {SEED12: 2.0, GEN1000: 100.0, ELEMENTS: 1000.0}
INNER_TIMEOUT_S = 900.0


def _out(*cmd: str) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def machine() -> dict[str, str]:
    cpu = "CPU unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "nproc": _out("nproc"),
        "kernel": _out("uname", "-r"),
        "nft": _out("nft", "--version"),
        "python": platform.python_version(),
        "cpu": cpu,
        "load": load,
    }


def root_tables() -> str:
    """`nft list tables` of the root namespace (read-only), to prove it did not change."""
    return _out("nft", "list", "tables")


def run_cases(cfg: RunConfig, cases: list[str]) -> dict[str, Result]:
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="afwb-") as tmp:
        for case in cases:
            started = time.monotonic()
            print(f"bench: {case} …", file=sys.stderr, flush=True)
            if case == SEED12:
                results[case] = bench_policy.run_case(
                    SEED12_POLICY, cfg.reps_seed12, warmup=1, timeout=INNER_TIMEOUT_S
                )
            elif case == GEN1000:
                path = Path(tmp) / f"generated{cfg.gen_rules}.yaml"
                path.write_text(generate_policy(cfg.gen_rules))
                # Runs of about a second need no warm-up (the policy was applied once
                # before any timing); skipping it keeps a full run near three minutes.
                results[case] = bench_policy.run_case(
                    path, cfg.reps_gen1000, warmup=0, timeout=INNER_TIMEOUT_S
                )
            else:
                results[case] = bench_elements.run_case(
                    SEED12_POLICY,
                    cfg.elements,
                    cfg.chunk,
                    cfg.reps_elements,
                    timeout=INNER_TIMEOUT_S,
                )
            print(
                f"bench: {case} done in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return results


def rows_for(cfg: RunConfig, results: dict[str, Result]) -> list[Row]:
    rows: list[Row] = []
    if SEED12 in results:
        rows += report.policy_rows("12 rules", results[SEED12], TARGETS_MS[SEED12])
    if GEN1000 in results:
        rows += report.policy_rows(
            f"{cfg.gen_rules:,} rules", results[GEN1000], TARGETS_MS[GEN1000]
        )
    if ELEMENTS in results:
        rows += report.element_rows(
            f"{cfg.elements // 1000}k elements", results[ELEMENTS], cfg, TARGETS_MS[ELEMENTS]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark aitherfwd against nft -f and libnftables, each case in its own "
        "network namespace (needs root). Results: docs/benchmarks.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and 20,000 elements; prints only, unless --docs",
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=[SEED12, GEN1000, ELEMENTS],
        help="run only this case (repeatable); default: all three",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help=f"write the report here (default after a full run: {DOCS})",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write any report file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: run as root (they create network namespaces)", file=sys.stderr)
        return 2
    cfg = QUICK if args.quick else FULL
    cases = args.case or [SEED12, GEN1000, ELEMENTS]
    info = machine()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    tables_before = root_tables()
    t0 = time.monotonic()
    try:
        results = run_cases(cfg, cases)
    except BenchError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    finally:
        leftovers = leftover_namespaces()
        tables_after = root_tables()
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    checks = [
        f"run took {time.monotonic() - t0:.0f} s, load average at the end {load_end}",
        "no `afwb-` namespace left"
        if not leftovers
        else f"namespaces LEFT: {', '.join(leftovers)}",
        "root namespace's `nft list tables` unchanged"
        if tables_before == tables_after
        else "root namespace's tables CHANGED",
    ]
    rows = rows_for(cfg, results)
    print(report.table(rows))
    if ELEMENTS in results:
        print(report.verification(results[ELEMENTS]) + "\n")
    print("Checks: " + "; ".join(checks) + ".")
    target = args.docs or (None if cfg.quick or args.case else DOCS)
    if target is not None and not args.no_docs:
        exe = (
            os.path.relpath(sys.executable, REPO)
            if sys.executable.startswith(str(REPO))
            else sys.executable
        )
        command = " ".join([exe, "-m", "benchmarks.run", *(argv or sys.argv[1:])])
        target.write_text(
            report.document(
                command=command,
                machine=info,
                cfg=cfg,
                results=results,
                rows=rows,
                started=started,
                checks=checks,
            )
        )
        print(f"wrote {target}", file=sys.stderr)
    ok = not leftovers and tables_before == tables_after
    ok = ok and (ELEMENTS not in results or bool(results[ELEMENTS]["info"]["ok"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
