"""Prometheus metrics of an ASGI middleware (layer L2): a collector over its `stats()`.

Owns: `MiddlewareCollector`, which turns `FirewallMiddleware.stats()` into metric families
at each scrape of the application's own registry, and `register_middleware()`, the one
line an application adds. The middleware itself imports no metrics library (an app that
does not export Prometheus metrics pays nothing); its counters are a fixed set of names
from the code, so the `kind` label is bounded.

    from aitherfwd.adapters.asgi_metrics import register_middleware
    app = FirewallMiddleware(app)
    register_middleware(app)          # into prometheus_client's default REGISTRY
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

GAUGES = {
    "live": "1 while the middleware follows the daemon's watch stream, 0 while it judges "
    "with the last policy it received (or fails open without one)",
    "generation": "The daemon's policy generation the middleware judges with (0: none yet).",
    "blocks": "Blocked addresses and prefixes the middleware holds.",
}


class HasStats(Protocol):
    def stats(self) -> dict[str, int]: ...


class MiddlewareCollector(Collector):
    def __init__(self, middleware: HasStats, prefix: str = "aitherfwd_middleware") -> None:
        self.middleware = middleware
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats = self.middleware.stats()
        events = CounterMetricFamily(
            f"{self.prefix}_events",
            "Requests and follower events by kind (requests, denied, bypassed, spoofed, "
            "malformed, fail_open_admitted, unavailable, daemon_lost, reports_sent, …).",
            labels=["kind"],
        )
        for kind, value in sorted(stats.items()):
            if kind not in GAUGES:
                events.add_metric([kind], float(value))
        yield events
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(f"{self.prefix}_{name}", doc, value=float(stats.get(name, 0)))


def register_middleware(
    middleware: HasStats, registry: CollectorRegistry = REGISTRY
) -> MiddlewareCollector:
    collector = MiddlewareCollector(middleware)
    registry.register(collector)
    return collector
