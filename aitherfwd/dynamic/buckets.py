"""The evaluator's token buckets, mirroring the kernel's per-source `limit` meters
(layer L1, pure). Moved out of `evaluator`, which re-exports them.
"""

from __future__ import annotations

from aitherfwd.nft.rulechain import RATELIMIT_SET_TIMEOUT

NANOS = 1_000_000_000


class TokenBuckets:
    """Token buckets per (rule, source address), mirroring the kernel's `limit` meters:
    capacity `burst`, refilled at `rate` per second, full when created, counted in integer
    nanoseconds like nft_limit. A bucket left alone for the meter set's timeout expires (the
    kernel drops the element) and starts full again. At most `max_keys` buckets; the least
    recently used goes first."""

    def __init__(
        self, max_keys: int = 100_000, idle_timeout: float = RATELIMIT_SET_TIMEOUT
    ) -> None:
        self._max_keys = max_keys
        self._idle_ns = round(idle_timeout * NANOS)
        self._buckets: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (tokens, last)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: tuple[str, str], rate: int, burst: int, now: float) -> bool:
        """Take one token; False (and nothing taken) when the bucket is empty."""
        cost = NANOS // rate
        capacity = cost * burst
        now_ns = round(now * NANOS)
        held = self._buckets.pop(key, None)
        if held is None or now_ns - held[1] >= self._idle_ns:
            tokens = capacity
        else:
            tokens = min(capacity, held[0] + max(0, now_ns - held[1]))
        allowed = tokens >= cost
        self._buckets[key] = (tokens - cost if allowed else tokens, now_ns)
        if len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]
        return allowed
