"""The clock protocol (layer L0): the pure core takes time as an argument, never reads it.

Owns: `Clock`, the wall and monotonic clock the daemon wires in, and `FakeClock` for tests.
Must not import anything from aitherfwd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class FakeClock:
    """A clock that moves only when told to: `advance(seconds)`."""

    wall: float = 1_700_000_000.0
    mono: float = 1_000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
