"""Sliding-window rate limits per agent and per agent and tool (layer L1, pure).

Owns: `RateLimits`, a log of the times of the calls each key made in the last 60 seconds
(a deque per key, never longer than the key's limit): exact at the window's edges,
O(1) amortised per call. Keys are bounded by construction — agents come from the token
directory (or are the one `anonymous`), tools from the policy — so memory is bounded by
(agents × (1 + tools)) × limit timestamps. Refused calls are not logged (a flood does not
extend its own ban). The seed had one global fixed window and answered 200. Time is an
argument (monotonic seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Budget:
    key: str  # "agent" or "agent/tool", what the refusal names
    limit: int


class RateLimits:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._log: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._log.setdefault(key, deque())
        edge = now - self.window
        while times and times[0] <= edge:
            times.popleft()
        return times

    def admit(self, budgets: list[Budget], now: float) -> Budget | None:
        """Log the call against every budget and return None, or return the first budget
        that is spent (and log nothing)."""
        logs = [(b, self._recent(b.key, now)) for b in budgets]
        for budget, times in logs:
            if len(times) >= budget.limit:
                return budget
        for _, times in logs:
            times.append(now)
        return None

    def retry_after(self, budget: Budget, now: float) -> float:
        """Seconds until the spent budget admits one call again."""
        times = self._recent(budget.key, now)
        if len(times) < budget.limit:
            return 0.0
        return max(0.0, times[-budget.limit] + self.window - now)

    def keys(self) -> int:
        return len(self._log)

    def forget_idle(self, now: float) -> None:
        """Drop the keys with nothing in their window (after a reload removed tools)."""
        for key in [k for k in self._log if not self._recent(k, now)]:
            del self._log[key]
