"""Prometheus exposition of the gateway's counters (layer L2; prometheus_client).

Owns: one custom collector over `GatewayStats` on its own registry (no process-global
state): decisions by tool (the policy's names, else `other`), verdict and reason class;
rate-limited and unauthorized calls; grants by result; reloads by result; a latency
histogram. A scrape copies integers; nothing is labelled by agent, path or address.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from aitherfwd.gateway.service import Gateway
from aitherfwd.gateway.stats import BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "aitherfwd_gateway_"


class _Collector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self.gateway.stats
        d = CounterMetricFamily(
            P + "decisions", "Tool calls decided", labels=["tool", "verdict", "reason"]
        )
        for (tool, verdict, reason), n in sorted(s.decisions.items()):
            d.add_metric([tool, verdict, reason], n)
        yield d
        yield CounterMetricFamily(
            P + "rate_limited", "Calls refused by a rate limit", s.rate_limited
        )
        yield CounterMetricFamily(
            P + "unauthorized", "Calls refused for a missing or wrong agent token", s.unauthorized
        )
        g = CounterMetricFamily(
            P + "grants", "Sandbox grants asked of the daemon", labels=["result"]
        )
        g.add_metric(["granted"], s.grants)
        g.add_metric(["refused"], s.grants_refused)
        yield g
        r = CounterMetricFamily(P + "reloads", "Policy reloads", labels=["result"])
        for result, n in sorted(s.reloads.items()):
            r.add_metric([result], n)
        yield r
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), s.bucket_counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        h = HistogramMetricFamily(P + "decision_seconds", "Time to decide one call")
        h.add_metric([], buckets, s.latency_sum)
        yield h
        yield GaugeMetricFamily(
            P + "policy_tools", "Tools the policy names", len(self.gateway.policy.tool_names())
        )


def registry(gateway: Gateway) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(gateway))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
