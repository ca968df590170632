"""Request budgets per peer uid (layer L3): token buckets per non-admin uid, so that no
role's flood can own the event loop while an administrator waits.

Owns: the buckets and the coded refusal `E-RATE-LIMITED` (HTTP 429). Two budgets use it:
- requests: `requests_per_uid` per second (a burst of twice that), one token per request,
  taken on the request head before any body is read;
- threat events: `threat_events_per_uid` per second (a burst of twice that), one token per
  event of a `POST /v1/threats`, taken once the body is parsed and before any event is
  processed. A request that costs more than the bucket holds is accepted while the bucket
  has at least one token and leaves it in debt (so one large batch always goes through,
  and the uid's average rate stays bounded); while in debt every request is refused.
At most `MAX_PEERS` uids are remembered per budget — the least recently seen goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from aitherfwd.errors import RequestError

MAX_PEERS = 4096


class RequestBudgets:
    def __init__(
        self,
        per_second: int,
        monotonic: Callable[[], float],
        *,
        unit: str = "requests",
        setting: str = "requests_per_uid",
    ) -> None:
        self.rate = float(per_second)
        self.burst = 2.0 * per_second
        self.monotonic = monotonic
        self.unit, self.setting = unit, setting
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()  # uid -> (tokens, at)
        self.refused = 0

    def take(self, uid: int, cost: float = 1.0) -> None:
        """`cost` tokens of `uid`'s budget; raises RequestError (E-RATE-LIMITED) when the
        bucket holds less than one token (it may go into debt by a request's cost)."""
        now = self.monotonic()
        tokens, at = self._buckets.pop(uid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) >= MAX_PEERS:
            self._buckets.popitem(last=False)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            self.refused += 1
            wait = (1.0 - tokens) / self.rate
            raise RequestError(
                f"uid {uid} is over its budget of {self.rate:.0f} {self.unit} per second; "
                f"slow down (retry in {wait:.1f} s; the daemon's [control] {self.setting})",
                code="E-RATE-LIMITED",
            )
        self._buckets[uid] = (tokens - cost, now)
