"""Run test code inside a network namespace without a subprocess: `with inside(ns): ...`.

setns(2) switches only the calling thread, and the root namespace is restored in a
`finally` (and checked), so a failing test can never leave this process — and its later
kernel calls — in the wrong namespace or, worse, act on the host's own firewall.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _current() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextmanager
def inside(ns: str) -> Iterator[None]:
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
        assert _current() == before, "failed to return to the original network namespace"
