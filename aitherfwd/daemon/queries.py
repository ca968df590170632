"""The evaluation service (layer L3): would this packet pass, and which rule decides?

Owns: the per-source token buckets of `/v1/evaluate` and the judgement of one request
against the current generation's evaluator (the kernel's semantics), the live blocks and
the egress state (resolved names, sandbox grants). Returns the evaluator's verdict and its
latency; the API renders it. Changes nothing but the buckets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aitherfwd.clock import Clock
from aitherfwd.control.schema import EvaluateSpec
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.generations import Generations
from aitherfwd.evaluator import GeoLookup, Request, TokenBuckets, Verdict
from aitherfwd.stats import Stats


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    latency_us: float


class Queries:
    def __init__(
        self,
        clock: Clock,
        generations: Generations,
        blocks: BlockService,
        egress: EgressRuntime,
        stats: Stats,
    ) -> None:
        self.clock, self.generations, self.blocks = clock, generations, blocks
        self.egress, self.stats = egress, stats
        self.buckets = TokenBuckets()
        self.geo: GeoLookup | None = None  # daemon/geosets.py, set by the wiring

    def evaluate(self, spec: EvaluateSpec) -> Judgement:
        gen = self.generations.current()
        started = time.perf_counter()
        verdict = gen.evaluator.evaluate(
            Request(
                spec.source,
                spec.protocol,
                spec.dest_port,
                spec.direction,
                spec.dest,
                spec.path,
                spec.authenticated,
            ),
            self.clock.now(),
            self.blocks.table,
            self.buckets,
            self.egress,
            geo=self.geo,
        )
        seconds = time.perf_counter() - started
        self.stats.evaluated(seconds)
        return Judgement(verdict, round(seconds * 1e6, 1))
