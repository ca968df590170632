"""Counters and histograms the daemon increments, and the immutable snapshot that the
metrics exporter reads (layer L1, pure: no I/O, no clock, no prometheus_client).

Owns: `Histogram` (fixed buckets), `Stats` (every event counter the daemon keeps only for
metrics) and `Snapshot`, a frozen picture of everything exported. Label values are always
from small fixed sets or capped (`BoundedCounts`): no label can grow with the number of
offenders, so 100,000 distinct offenders leave the number of series unchanged.
The kernel writer's thread records transactions while the event loop takes snapshots, so
mutations and copies hold one lock (cheap: a few increments per event).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

# seconds; wide enough for one element (0.2 ms) up to a 1,000,000-element restore (10 s)
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
EVALUATE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01)
BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
MAX_LABEL_VALUES = 50  # distinct values of a client-chosen label (threat types) before "other"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """Cumulative counts per upper bound (the last is +Inf), their sum and total count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # len(bounds) + 1, the last one == count
    total: float
    count: int


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def value(self) -> HistogramValue:
        cumulative, running = [], 0
        for c in self._counts:
            running += c
            cumulative.append(running)
        return HistogramValue(self.bounds, tuple(cumulative), self._sum, running)


class BoundedCounts:
    """Counts per label value; values beyond the first `limit` distinct ones count as
    "other", so a client sending ever new type names cannot create series."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, value: str, n: int = 1) -> None:
        if value not in self.counts and len(self.counts) >= self.limit:
            value = OTHER
        self.counts[value] = self.counts.get(value, 0) + n

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.counts.items()))


class Stats:
    """Event counters only the metrics need (the daemon's status has its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reload_seconds = Histogram(DURATION_BUCKETS)
        self.kernel_transactions = {"ok": 0, "failed": 0}
        self.kernel_seconds = Histogram(DURATION_BUCKETS)
        self.kernel_batch = Histogram(BATCH_BUCKETS)
        self.evaluate_seconds = Histogram(EVALUATE_BUCKETS)
        self.blocks = BoundedCounts()  # by reason: the source that decided (manual, …)
        self.unblocks = 0
        self.expiries = 0
        self.escalations = BoundedCounts()  # by target: temporary | permanent
        self.threat_events = BoundedCounts()  # by type, capped
        # gauges other features set (0 until they do)
        self.sandbox_v4 = 0
        self.sandbox_v6 = 0
        self.sandbox_granted_total = 0

    def sandbox(self, v4: int, v6: int, granted_total: int) -> None:
        """Live sandbox grants per family, and grants made since the start."""
        self.sandbox_v4, self.sandbox_v6, self.sandbox_granted_total = v4, v6, granted_total

    def reload(self, seconds: float) -> None:
        with self._lock:
            self.reload_seconds.observe(seconds)

    def transaction(self, ok: bool, seconds: float, elements: int) -> None:
        """One kernel transaction (called from the kernel writer's thread)."""
        with self._lock:
            self.kernel_transactions["ok" if ok else "failed"] += 1
            self.kernel_seconds.observe(seconds)
            if ok and elements:
                self.kernel_batch.observe(elements)

    def evaluated(self, seconds: float) -> None:
        with self._lock:
            self.evaluate_seconds.observe(seconds)

    def blocked(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.blocks.add(reason, n)

    def unblocked(self, n: int = 1) -> None:
        with self._lock:
            self.unblocks += n

    def expired(self, n: int) -> None:
        with self._lock:
            self.expiries += n

    def escalated(self, to: str) -> None:
        with self._lock:
            self.escalations.add(to)

    def threat(self, kind: str) -> None:
        with self._lock:
            self.threat_events.add(kind)

    def events(self) -> EventValues:
        with self._lock:
            return EventValues(
                reload_seconds=self.reload_seconds.value(),
                kernel_transactions=tuple(sorted(self.kernel_transactions.items())),
                kernel_seconds=self.kernel_seconds.value(),
                kernel_batch=self.kernel_batch.value(),
                evaluate_seconds=self.evaluate_seconds.value(),
                blocks=self.blocks.items(),
                unblocks=self.unblocks,
                expiries=self.expiries,
                escalations=self.escalations.items(),
                threat_events=self.threat_events.items(),
            )


Pairs = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class EventValues:
    reload_seconds: HistogramValue
    kernel_transactions: Pairs
    kernel_seconds: HistogramValue
    kernel_batch: HistogramValue
    evaluate_seconds: HistogramValue
    blocks: Pairs
    unblocks: int
    expiries: int
    escalations: Pairs
    threat_events: Pairs


@dataclass(frozen=True, slots=True)
class RuleCounters:
    """Packets and bytes per rule. `labels` is one tuple per generation, shared by every
    snapshot of it (the exporter caches its rendered label text by identity); `values`
    follows its order."""

    labels: tuple[tuple[str, str], ...] = ()  # (rule, action); rule "default": the default
    values: tuple[tuple[int, int], ...] = ()  # (packets, bytes)


@dataclass(frozen=True, slots=True)
class FleetValues:
    """The fleet's bus and counters (daemon/fleet.py), for /metrics."""

    connected: bool
    backlog: int
    backlog_dropped: int
    published: int
    applied: int
    invalid: int
    lag: int
    skipped: Pairs


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything /metrics exports, at one moment. Fields other features fill default to
    zero (conntrack, sandbox) until their hooks are wired."""

    version: str
    events: EventValues
    generation: int = 0
    policy_sha256: str = ""
    rules: RuleCounters = RuleCounters()
    ratelimited: RuleCounters = RuleCounters()  # packets dropped by a rule's rate limit
    dropped: Pairs = ()  # (reason, packets): blocklist | invalid
    dropped_bytes: Pairs = ()
    counters_age_seconds: float = -1.0  # since the kernel counters were read; -1: never
    blocked: tuple[tuple[str, str, int], ...] = ()  # (family, kind, count)
    reloads: Pairs = ()
    drift_repairs: int = 0
    audit_write_errors: int = 0
    notifications_dropped: int = 0
    conntrack_entries: int = 0
    conntrack_max_per_source: int = 0
    sandbox_grants: Pairs = (("ipv4", 0), ("ipv6", 0))
    sandbox_grants_total: int = 0
    # country and list sets (daemon/geosets.py): ranges per set; per source the time of
    # its last refresh attempt and whether it was read; refreshes by result
    geo_set_elements: Pairs = ()
    geo_refreshed_at: tuple[tuple[str, float], ...] = ()
    geo_source_ok: Pairs = ()
    geo_refreshes: Pairs = ()
    fleet: FleetValues | None = None  # None: no [fleet]
