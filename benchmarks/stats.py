"""Timing and summary statistics for the benchmarks (pure, no kernel).

Owns: `measure` (a bounded loop of in-process timed calls, with optional untimed setup),
`Summary` (n, p50, p90, min, max in milliseconds) and ratios between summaries.
Must not import the nftables binding or aitherfwd adapters.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def clock_ms(fn: Callable[[], Any]) -> float:
    """Milliseconds one call of `fn` takes (monotonic, nanosecond clock)."""
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`fn()`'s result and the milliseconds it took."""
    start = time.perf_counter_ns()
    result = fn()
    return result, (time.perf_counter_ns() - start) / 1e6


def measure(
    fn: Callable[[int], Any],
    reps: int,
    *,
    warmup: int = 1,
    setup: Callable[[int], Any] | None = None,
    collect: bool = True,
) -> list[float]:
    """Time `fn(i)` for i in range(reps) after `warmup` untimed calls. `setup(i)` runs
    before every call, untimed; garbage is collected before each timed call so one
    sample does not pay for another's allocations (`collect=False`: calls back to back,
    the collector off meanwhile — for a server on the other end, whose CPU would idle
    during each collection)."""
    for i in range(warmup):
        if setup is not None:
            setup(-1 - i)
        fn(-1 - i)
    samples: list[float] = []
    enabled = gc.isenabled()
    if not collect:
        gc.disable()
    try:
        for i in range(reps):
            if setup is not None:
                setup(i)
            if collect:
                gc.collect()
            start = time.perf_counter_ns()
            fn(i)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        if enabled:
            gc.enable()
    return samples


@dataclass(frozen=True, slots=True)
class Summary:
    """Milliseconds: median, 90th percentile and extremes of `n` samples."""

    n: int
    p50: float
    p90: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        p90 = (
            statistics.quantiles(ordered, n=10, method="inclusive")[8]
            if len(ordered) > 1
            else ordered[0]
        )
        return cls(len(ordered), statistics.median(ordered), p90, ordered[0], ordered[-1])


def add_samples(*series: list[float]) -> list[float]:
    """Element-wise sums of per-iteration samples (e.g. compile + apply of the same run)."""
    if len({len(s) for s in series}) != 1:
        raise ValueError("series of different lengths")
    return [sum(values) for values in zip(*series, strict=True)]


def ratio(value: Summary, baseline: Summary | None) -> float | None:
    """p50 over the baseline's p50; None when there is no baseline."""
    if baseline is None or baseline.p50 <= 0:
        return None
    return value.p50 / baseline.p50
