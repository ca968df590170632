"""The gateway's counters (layer L1, pure).

Owns: decisions by (tool label, verdict, reason class) with tool names outside the
policy's counted as `other` (bounded labels), rate-limited calls, grants given and
refused, reloads by result, and a fixed-bucket latency histogram — plain integers a
scrape copies in O(labels), never per-call objects.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OTHER = "other"


@dataclass
class GatewayStats:
    total: int = 0
    denied: int = 0
    rate_limited: int = 0
    grants: int = 0
    grants_refused: int = 0
    reloads: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    unauthorized: int = 0
    decisions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    known_tools: frozenset[str] = frozenset()

    def label(self, tool: str) -> str:
        return tool if tool in self.known_tools else OTHER

    def count(self, tool: str, allowed: bool, reason_class: str, seconds: float) -> None:
        self.total += 1
        self.denied += 0 if allowed else 1
        key = (self.label(tool), "allow" if allowed else "deny", reason_class)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def retool(self, names: list[str]) -> None:
        """A new policy: its names are the labels from now on (old series stay)."""
        self.known_tools = frozenset(names)
