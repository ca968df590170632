"""Network namespaces for the kernel benchmarks, and re-executing a module inside one.

Owns: `afwb-<pid>-<n>` namespaces (created and always deleted by lab/netns.py), running
`ip netns exec NS python -m benchmarks.<module> --inner ...` (argument lists, no shell,
bounded by a timeout) and reading the one JSON result line it prints, and the guard every
inner process calls before touching nftables: refuse to run outside its own namespace.
The root namespace's firewall is never touched here or by any inner process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lab import ROOT, netns

REPO = ROOT
PREFIX = "afwb"
RESULT_MARK = "AFWB-RESULT "


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh, empty network namespace, deleted on exit whatever happens."""
    try:
        name = netns.create(PREFIX, loopback=False)
    except netns.LabError as exc:
        raise BenchError(str(exc)) from exc
    try:
        yield name
    finally:
        netns.delete(name)


def run_inner(ns: str, module: str, args: list[str], *, timeout: float) -> dict[str, Any]:
    """Run `python -m module --inner --netns NS args...` inside `ns`; return its result."""
    cmd = netns.exec_argv(ns, [sys.executable, "-m", module, "--inner", "--netns", ns, *args])
    env = {**os.environ, "TZ": "UTC", "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{module} in {ns} did not finish within {timeout:.0f} s") from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            if proc.returncode != 0:
                break
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            return result
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise BenchError(f"{module} in {ns} failed (exit {proc.returncode}):\n{tail}")


def emit(result: dict[str, Any]) -> None:
    """Print the inner process's result line (the only line the outer process reads)."""
    print(RESULT_MARK + json.dumps(result, sort_keys=True), flush=True)


def require_own_namespace(ns: str) -> None:
    """Exit unless this process runs inside the benchmark namespace `ns`, and so not in
    the namespace of the process that started it (the root namespace, whose firewall the
    benchmarks must never change). `ip netns exec` execs us, so our parent is the runner."""
    here = os.stat("/proc/self/ns/net").st_ino
    try:
        named = os.stat(f"/run/netns/{ns}").st_ino
        parent = os.stat(f"/proc/{os.getppid()}/ns/net").st_ino
    except OSError as exc:
        raise SystemExit(f"refusing to benchmark: cannot identify namespaces ({exc})") from exc
    if not ns.startswith(f"{PREFIX}-") or here != named or here == parent:
        raise SystemExit(f"refusing to benchmark: not inside network namespace {ns!r}")


def leftover_namespaces() -> list[str]:
    """Benchmark namespaces that still exist (there should be none after a run)."""
    return netns.listing(PREFIX)


def block_v4_elements(ns: str, timeout: float = 300) -> list[Any]:
    """The elements of `block_v4` in namespace `ns`, read with `nft -j` (the benchmarks
    check the daemon's work from outside; the daemon itself never runs nft). [] when the
    table or set is not there."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "aitherfwd", "block_v4"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    ).stdout
    if not out:
        return []
    for item in json.loads(out)["nftables"]:
        if "set" in item:
            elems: list[Any] = item["set"].get("elem", [])
            return elems
    return []
