"""Throwaway network namespaces: create, enter, delete, and sweep what dead runs left.

Owns: unique names `<prefix>-<pid>-<n>` (`afw` for tests and the demo, `afwb` for the
benchmarks), `namespace()` that always deletes what it created (also on failure),
`inside(ns)` to run code of this process in a namespace without a subprocess, the sweep
of namespaces whose creating process is gone (pytest's session start), and the small
`run`/`must` wrappers around `ip` (argument lists, no shell, with a timeout). Only
namespaces created here are ever touched; the root namespace's firewall never is.

`inside`: setns(2) switches only the calling thread, and the root namespace is restored
in a `finally` (and checked), so a failing test can never leave this process — and its
later kernel calls — in the wrong namespace or, worse, act on the host's own firewall.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "afw"
CLONE_NEWNET = 0x40000000
_seq = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """A lab command failed; the message says which and why."""


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def must(argv: list[str], timeout: float = 60) -> None:
    res = run(argv, timeout)
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {res.stderr.strip()}")


def create(prefix: str = PREFIX, *, loopback: bool = True) -> str:
    """A new, empty namespace `<prefix>-<pid>-<n>` (with `lo` up unless told otherwise);
    the caller deletes it (`delete`), or uses `namespace()` which always does."""
    name = f"{prefix}-{os.getpid()}-{next(_seq)}"
    must(["ip", "netns", "add", name])
    if loopback:
        try:
            must(["ip", "-n", name, "link", "set", "lo", "up"])
        except BaseException:
            delete(name)
            raise
    return name


def delete(name: str) -> None:
    run(["ip", "netns", "delete", name])


@contextmanager
def namespace(prefix: str = PREFIX, *, loopback: bool = True) -> Iterator[str]:
    """A fresh namespace, deleted on exit whatever happens."""
    name = create(prefix, loopback=loopback)
    try:
        yield name
    finally:
        delete(name)


def exec_argv(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def listing(prefix: str = PREFIX) -> list[str]:
    """Namespaces of this lab (`<prefix>-…`) that exist now."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line]
    return [n for n in names if n.startswith(f"{prefix}-")]


def sweep(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces left by lab processes that died without cleaning up (their
    pid, in the name, is gone); returns their names."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)-\S+")
    stale = [
        n
        for n in listing(prefix)
        if (m := pattern.fullmatch(n)) and not Path(f"/proc/{m.group(1)}").exists()
    ]
    for name in stale:
        delete(name)
    return stale


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _current() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body in namespace `ns` (this thread only), then come back — checked."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    before = _current()
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        os.close(target)
        _setns(original)
        os.close(original)
        if _current() != before:
            raise LabError("failed to return to the original network namespace")
