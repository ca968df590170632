"""Request budgets per peer uid (layer L3): a token bucket per non-admin uid, so that no
role's flood of requests can own the event loop while an administrator waits.

Owns: the buckets (`requests_per_uid` per second, a burst of twice that, at most
`MAX_PEERS` uids remembered — the least recently seen goes first) and the coded refusal
`E-RATE-LIMITED` (HTTP 429) raised on the request head, before any body is read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from aitherfwd.errors import RequestError

MAX_PEERS = 4096


class RequestBudgets:
    def __init__(self, per_second: int, monotonic: Callable[[], float]) -> None:
        self.rate = float(per_second)
        self.burst = 2.0 * per_second
        self.monotonic = monotonic
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()  # uid -> (tokens, at)
        self.refused = 0

    def take(self, uid: int) -> None:
        """One request of `uid`; raises RequestError (E-RATE-LIMITED) over its budget."""
        now = self.monotonic()
        tokens, at = self._buckets.pop(uid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) >= MAX_PEERS:
            self._buckets.popitem(last=False)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            self.refused += 1
            raise RequestError(
                f"uid {uid} is over its budget of {self.rate:.0f} requests per second; "
                "slow down (the daemon's [control] requests_per_uid)",
                code="E-RATE-LIMITED",
            )
        self._buckets[uid] = (tokens - 1.0, now)
