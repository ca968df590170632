"""Giving freed heap memory back to the kernel, and the cyclic collector (layer L2).

Owns: one call, glibc's `malloc_trim(0)`, through ctypes. A transaction of 100,000
elements makes ~150 MB of short-lived JSON (Python's and libnftables'); once freed, glibc
keeps it mapped, so a daemon holding 100,000 blocks would sit at ~200 MB instead of ~60.
Trimming after such a batch costs a few milliseconds. On a libc without malloc_trim
(musl) this does nothing. `trim_later` trims once a large request is answered, freeing its
garbage first.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
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
M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD = 1024 * 1024  # above what one ban allocates (128 KiB cost 0.1 ms per ban)


def fixed_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at 1 MiB. glibc raises it to the size of any mmapped
    block freed (up to 32 MiB): after the first large buffer, a 100,000-ban request's
    multi-megabyte buffers (its body, the kernel batch) come from the heap and leave it
    fragmented; mmapped, they go back to the kernel when freed. Measured on a fresh daemon:
    RSS after one 100,000-ban request 66.7 -> 62.0 MB, single-ban latency unchanged (at
    glibc's initial 128 KiB it rose by 0.1 ms: something of each ban is mmapped then)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        return


def trim() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


TRIM_DELAY = 0.2  # seconds: the large request has been answered by then
# what the scheduled trim frees first, and the loop it is scheduled on; None: none is
_later: tuple[asyncio.AbstractEventLoop, list[object]] | None = None


def trim_later(garbage: object = None) -> None:
    """Trim the heap once the large request now running has been answered, after freeing
    `garbage` (its parsed body: 100,000 objects take ≈ 5 ms to free, which its client
    would otherwise wait for). Calls within TRIM_DELAY on one loop share one trim."""
    global _later  # noqa: PLW0603 - one pending trim per process (the event loop's)
    loop = asyncio.get_running_loop()
    if _later is None or _later[0] is not loop:  # none pending, or on a loop now gone
        _later = (loop, [])
        loop.call_later(TRIM_DELAY, _trim_now, loop)
    _later[1].append(garbage)


def _trim_now(loop: asyncio.AbstractEventLoop) -> None:
    global _later  # noqa: PLW0603
    if _later is not None and _later[0] is loop:
        _later = None  # the garbage it held goes here
    trim()


# --- the cyclic collector ---------------------------------------------------------------------

SLOW_COLLECTION = 0.1  # seconds: a full collection this long stalls every request; logged
_started: dict[int, float] = {}
slow_collections = 0


def _on_collection(phase: str, info: dict[str, int]) -> None:
    global slow_collections  # noqa: PLW0603 - one counter of the process, read by telemetry
    generation = info.get("generation", 0)
    if phase == "start":
        _started[generation] = time.perf_counter()
        return
    began = _started.pop(generation, None)
    if began is None:
        return
    spent = time.perf_counter() - began
    if spent >= SLOW_COLLECTION:
        slow_collections += 1
        log.warning(
            "slow garbage collection generation=%d seconds=%.3f collected=%d",
            generation,
            spent,
            info.get("collected", 0),
        )


def settle_after_start() -> None:
    """After the cold start: everything made so far (modules, the policy, the restored
    tables) moves to the collector's permanent generation, so full collections no longer
    walk it (with 1,000,000 restored blocks a full collection took a noticeable stall of
    the event loop), and collections that still take long are logged."""
    gc.collect()
    gc.freeze()
    trim()  # the cold start's garbage (the policy's parse, the restore's batches): 1.3 MB idle
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)
