"""Giving freed heap memory back to the kernel (layer L2).

Owns: one call, glibc's `malloc_trim(0)`, through ctypes. A transaction of 100,000
elements makes ~150 MB of short-lived JSON (Python's and libnftables'); once freed, glibc
keeps it mapped, so a daemon holding 100,000 blocks would sit at ~200 MB instead of ~60.
Trimming after such a batch costs a few milliseconds. On a libc without malloc_trim
(musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
LARGE_BATCH = 10_000  # elements; smaller batches leave too little behind to matter


def _load() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


_malloc_trim = _load()


def trim() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)
