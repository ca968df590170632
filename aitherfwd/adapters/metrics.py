"""The Prometheus endpoint (layer L2): the only importer of prometheus_client.

Owns: a custom collector that turns one immutable `Snapshot` into metric families on the
daemon's own `CollectorRegistry` (with the process collector and build info), and a small
asyncio HTTP/1.1 server answering `GET /metrics` in the text exposition format. A scrape
asks the daemon for a snapshot on the event loop (no thread reads live daemon state), so
its cost is O(rules): no label holds an address, nothing lists a kernel set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from aitherfwd.stats import HistogramValue, Pairs, RuleCounters, Snapshot

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 16 << 10
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
# what generate_latest writes (spelled out: Debian 12's prometheus_client 0.16 has no
# CONTENT_TYPE_PLAIN_0_0_4, and newer ones mean another format by CONTENT_TYPE_LATEST)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Provider = Callable[[], Awaitable[Snapshot]]


def _counter(name: str, doc: str, label: str, pairs: Pairs) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in pairs:
        family.add_metric([value], count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, h: HistogramValue) -> HistogramMetricFamily:
    bounds = [*(repr(float(b)) for b in h.bounds), "+Inf"]
    buckets = list(zip(bounds, h.cumulative, strict=True))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


def families(s: Snapshot) -> Iterator[Metric]:
    """Every aitherfwd family of one snapshot but the per-rule ones (`RuleText`); the
    process collector adds process_*."""
    info = GaugeMetricFamily("aitherfwd_build_info", "Build of the daemon.", labels=["version"])
    info.add_metric([s.version], 1)
    yield info
    yield from _drop_families(s)
    yield from _block_families(s)
    yield from _policy_families(s)
    yield from _daemon_families(s)
    yield from _fleet_families(s)


def _drop_families(s: Snapshot) -> Iterator[Metric]:
    yield _counter(
        "aitherfwd_dropped_packets",
        "Packets dropped before the rules: blocklist (block sets) or invalid conntrack state.",
        "reason",
        s.dropped,
    )
    yield _counter(
        "aitherfwd_dropped_bytes", "Bytes of aitherfwd_dropped_packets.", "reason", s.dropped_bytes
    )
    yield _gauge(
        "aitherfwd_rule_counters_age_seconds",
        "Age of the kernel counter reading behind the rule families (-1: never read).",
        s.counters_age_seconds,
    )


def _block_families(s: Snapshot) -> Iterator[Metric]:
    ev = s.events
    blocked = GaugeMetricFamily(
        "aitherfwd_blocked_addresses",
        "Active blocks (addresses and prefixes) by family and kind.",
        labels=["family", "kind"],
    )
    for family, kind, count in s.blocked:
        blocked.add_metric([family, kind], count)
    yield blocked
    yield _counter(
        "aitherfwd_blocks",
        "Blocks made, by reason (who decided: manual, reputation, detection).",
        "reason",
        ev.blocks,
    )
    yield CounterMetricFamily(
        "aitherfwd_unblocks", "Blocks lifted by an operator.", value=ev.unblocks
    )
    yield CounterMetricFamily(
        "aitherfwd_block_expiries", "Temporary blocks that ran out.", value=ev.expiries
    )
    yield _counter(
        "aitherfwd_escalations", "Reputation escalations by target.", "to", ev.escalations
    )
    yield _counter(
        "aitherfwd_threat_events",
        "Threat events received, by type (the first 50 types; later ones count as other).",
        "type",
        ev.threat_events,
    )
    grants = GaugeMetricFamily(
        "aitherfwd_sandbox_grants", "Live sandbox grants by family.", labels=["family"]
    )
    for family, count in s.sandbox_grants:
        grants.add_metric([family], count)
    yield grants
    yield CounterMetricFamily(
        "aitherfwd_sandbox_grants", "Sandbox grants made.", value=s.sandbox_grants_total
    )
    yield from _geo_families(s)


def _geo_families(s: Snapshot) -> Iterator[Metric]:
    sizes = GaugeMetricFamily(
        "aitherfwd_geo_set_elements", "Ranges in each country or list set.", labels=["set"]
    )
    for name, count in s.geo_set_elements:
        sizes.add_metric([name], count)
    yield sizes
    at = GaugeMetricFamily(
        "aitherfwd_geo_last_refresh_timestamp_seconds",
        "When each country/list source was last refreshed (read or failed).",
        labels=["source"],
    )
    for source, ts in s.geo_refreshed_at:
        at.add_metric([source], ts)
    yield at
    ok = GaugeMetricFamily(
        "aitherfwd_geo_source_ok",
        "1 when a source's last refresh read it, 0 when its last good contents were kept.",
        labels=["source"],
    )
    for source, value in s.geo_source_ok:
        ok.add_metric([source], value)
    yield ok
    yield _counter(
        "aitherfwd_geo_refreshes",
        "Country/list source refreshes by result.",
        "result",
        s.geo_refreshes,
    )


def _policy_families(s: Snapshot) -> Iterator[Metric]:
    ev = s.events
    yield _counter("aitherfwd_reloads", "Policy reloads by result.", "result", s.reloads)
    yield _histogram(
        "aitherfwd_reload_duration_seconds", "Time a policy reload took.", ev.reload_seconds
    )
    yield _gauge("aitherfwd_policy_generation", "Generation in force.", s.generation)
    policy = GaugeMetricFamily("aitherfwd_policy_info", "The policy in force.", labels=["sha256"])
    policy.add_metric([s.policy_sha256], 1)
    yield policy
    yield _counter(
        "aitherfwd_kernel_transactions",
        "nftables transactions the daemon sent, by result.",
        "result",
        ev.kernel_transactions,
    )
    yield _histogram(
        "aitherfwd_kernel_transaction_seconds", "Time of one transaction.", ev.kernel_seconds
    )
    yield _histogram(
        "aitherfwd_kernel_batch_elements",
        "Set elements carried by one transaction.",
        ev.kernel_batch,
    )
    yield _histogram(
        "aitherfwd_evaluate_seconds", "Time of one evaluate request.", ev.evaluate_seconds
    )


def _daemon_families(s: Snapshot) -> Iterator[Metric]:
    yield _gauge("aitherfwd_conntrack_entries", "Tracked connections.", s.conntrack_entries)
    yield _gauge(
        "aitherfwd_conntrack_max_per_source",
        "Most tracked connections held by one source.",
        s.conntrack_max_per_source,
    )
    yield CounterMetricFamily(
        "aitherfwd_drift_repairs", "Repairs of the table after drift.", value=s.drift_repairs
    )
    yield CounterMetricFamily(
        "aitherfwd_audit_write_errors", "Audit lines not written.", value=s.audit_write_errors
    )
    yield CounterMetricFamily(
        "aitherfwd_notifications_dropped",
        "Outbound notifications dropped (queue full or retries exhausted).",
        value=s.notifications_dropped,
    )


def _fleet_families(s: Snapshot) -> Iterator[Metric]:
    f = s.fleet
    if f is None:
        return
    yield _gauge("aitherfwd_fleet_connected", "1 while the fleet's bus is connected.", f.connected)
    yield _gauge("aitherfwd_fleet_backlog", "Decisions waiting to be published.", f.backlog)
    yield _gauge("aitherfwd_fleet_consumer_lag", "Fleet messages not yet delivered here.", f.lag)
    yield CounterMetricFamily(
        "aitherfwd_fleet_published", "Decisions published to the fleet.", value=f.published
    )
    yield CounterMetricFamily(
        "aitherfwd_fleet_applied", "Fleet decisions and events applied here.", value=f.applied
    )
    yield CounterMetricFamily(
        "aitherfwd_fleet_backlog_dropped",
        "Decisions given up on (backlog full, write failed).",
        value=f.backlog_dropped,
    )
    yield CounterMetricFamily(
        "aitherfwd_fleet_invalid", "Fleet messages dropped as malformed.", value=f.invalid
    )
    yield _counter(
        "aitherfwd_fleet_skipped", "Fleet decisions not applied here, by why.", "why", f.skipped
    )


class SnapshotCollector(Collector):
    """Yields the families of the snapshot set last (by the server, on the event loop);
    `rules` renders the per-rule families that follow them."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        self.rules = RuleText()

    def collect(self) -> Iterator[Metric]:
        if self.current is not None:
            yield from families(self.current)


class BootTimeProcessCollector(ProcessCollector):
    """prometheus_client's process collector, with the boot time from CLOCK_BOOTTIME: it
    reads it from /proc/stat, which the packaged unit hides (ProcSubset=pid), and without
    it exports nothing at all (found by the boot test)."""

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def registry() -> tuple[CollectorRegistry, SnapshotCollector]:
    reg = CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector()
    reg.register(collector)
    BootTimeProcessCollector(registry=reg)
    return reg, collector


def render(reg: CollectorRegistry, collector: SnapshotCollector, snap: Snapshot) -> bytes:
    collector.current = snap
    try:
        return generate_latest(reg) + collector.rules.render(snap.rules, snap.ratelimited)
    finally:
        collector.current = None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class RuleText:
    """The per-rule families (2 x (rules + 1) samples: the only part of a scrape that grows
    with the policy) in the text format, with each sample's name and labels rendered once
    per generation. prometheus_client's generic formatter validates and escapes every
    label of every sample on every scrape: 14.6 ms for 1,000 rules on this machine, this
    0.6 ms (docs/benchmarks-metrics.md). Same format, same escaping."""

    HEADERS = (
        "# HELP aitherfwd_rule_packets_total Packets that matched a rule (kernel named counter);"
        " rule=default: the default policy.\n# TYPE aitherfwd_rule_packets_total counter\n",
        "# HELP aitherfwd_rule_bytes_total Bytes that matched a rule (kernel named counter);"
        " rule=default: the default policy.\n# TYPE aitherfwd_rule_bytes_total counter\n",
        "# HELP aitherfwd_rule_ratelimited_packets_total Packets a rule's rate limit dropped."
        "\n# TYPE aitherfwd_rule_ratelimited_packets_total counter\n",
    )

    def __init__(self) -> None:
        self._labels: tuple[tuple[str, str], ...] | None = None
        self._limited: tuple[tuple[str, str], ...] | None = None
        self._prefixes: tuple[list[str], list[str], list[str]] = ([], [], [])

    def _prepare(self, rules: RuleCounters, limited: RuleCounters) -> None:
        if rules.labels is self._labels and limited.labels is self._limited:
            return
        sel = [f'{{action="{_escape(a)}",rule="{_escape(r)}"}} ' for r, a in rules.labels]
        lim = [f'{{rule="{_escape(r)}"}} ' for r, _ in limited.labels]
        self._prefixes = (
            [f"aitherfwd_rule_packets_total{s}" for s in sel],
            [f"aitherfwd_rule_bytes_total{s}" for s in sel],
            [f"aitherfwd_rule_ratelimited_packets_total{s}" for s in lim],
        )
        self._labels, self._limited = rules.labels, limited.labels

    def render(self, rules: RuleCounters, limited: RuleCounters) -> bytes:
        self._prepare(rules, limited)
        packets, nbytes, lim = self._prefixes
        parts = [self.HEADERS[0]]
        parts += [f"{p}{v[0]}.0\n" for p, v in zip(packets, rules.values, strict=True)]
        parts.append(self.HEADERS[1])
        parts += [f"{p}{v[1]}.0\n" for p, v in zip(nbytes, rules.values, strict=True)]
        parts.append(self.HEADERS[2])
        parts += [f"{p}{v[0]}.0\n" for p, v in zip(lim, limited.values, strict=True)]
        return "".join(parts).encode()


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9466`, `[::1]:9466` → (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9466 or [::1]:9466)")
    return host.removeprefix("[").removesuffix("]"), int(port)


class MetricsServer:
    def __init__(self, listen: str, provider: Provider) -> None:
        self.host, self.port = parse_listen(listen)
        self._provider = provider
        self._registry, self._collector = registry()
        self._server: asyncio.Server | None = None
        self._active = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        log.info("metrics listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def body(self) -> bytes:
        return render(self._registry, self._collector, await self._provider())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                return
            status, ctype, body, head_only = await self._answer(reader)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._active -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        if len(head) > MAX_HEADER_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"too large\n", False
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n", False
        path = parts[1].split(b"?", 1)[0]
        if path != b"/metrics":
            return "404 Not Found", "text/plain", b"see /metrics\n", parts[0] == b"HEAD"
        return "200 OK", CONTENT_TYPE, await self.body(), parts[0] == b"HEAD"
