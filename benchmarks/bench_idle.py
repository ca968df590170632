"""The daemon's idle RSS and what it imported: fresh daemons on the default policy.

Each round starts a daemon in a namespace (lab/daemon.py, through `aitherfwd run` as
systemd does), waits until it answers on its socket, lets it idle 1 s and reads its VmRSS;
the median over `--rounds` is the figure. One more start per tree, with
PYTHONPROFILEIMPORTTIME=1, lists the modules it imported (`-X importtime`, the daemon's
own output). `--before DIR` does the same for another tree (e.g. `git archive <commit> |
tar -x -C DIR`), alternating with this one in the same run, and prints the modules only
one of them imports. Prints; writes nothing.
Run: `sudo .venv/bin/python -m benchmarks.bench_idle [--before DIR] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.netns import REPO, namespace
from lab.daemon import DaemonProc

IDLE = 1.0  # seconds after the daemon first answers
IMPORT_LINE = re.compile(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s*(\S+)")


def _start(tree: Path, env: dict[str, str]) -> tuple[float, str]:
    """(idle VmRSS in MiB, the daemon's output) of one fresh daemon of `tree`."""
    policy = (REPO / "policies" / "default.yaml").read_text()
    os.environ["PYTHONPATH"] = str(tree)  # the package of `tree`, this tree's venv
    try:
        with namespace() as ns, tempfile.TemporaryDirectory(prefix="afwb-idle-") as tmp:
            d = DaemonProc(ns, Path(tmp), policy, quiet=False, client_timeout=60)
            d.start(env=env, deadline_s=60)
            try:
                time.sleep(IDLE)
                return d.rss_mb(), d.output()
            finally:
                d.cleanup()
    finally:
        os.environ.pop("PYTHONPATH", None)


def modules(output: str) -> set[str]:
    return {m.group(1) for m in IMPORT_LINE.finditer(output)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, help="another tree to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["this tree"] = REPO
    rss: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in trees if r % 2 == 0 else list(trees)[::-1]:
            rss[name].append(_start(trees[name], {})[0])
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    imported = {name: modules(_start(tree, profile)[1]) for name, tree in trees.items()}
    for name in trees:
        runs = ", ".join(f"{x:.1f}" for x in rss[name])
        print(
            f"{name}: idle RSS median {statistics.median(rss[name]):.1f} MiB ({runs}), "
            f"{len(imported[name])} modules imported"
        )
    if args.before:
        before, after = imported["before"], imported["this tree"]
        print("only before:", " ".join(sorted(before - after)) or "-")
        print("only this tree:", " ".join(sorted(after - before)) or "-")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
