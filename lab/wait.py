"""Polling with a deadline, the only way the lab waits (no bare sleeps).

Owns: `until(predicate, deadline_s, what)`. Must not import anything but the standard library.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def until(
    predicate: Callable[[], object], deadline_s: float, what: str, *, interval: float = 0.05
) -> None:
    """Return as soon as `predicate()` is truthy; TimeoutError naming `what` after
    `deadline_s` seconds."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"not within {deadline_s}s: {what}")
