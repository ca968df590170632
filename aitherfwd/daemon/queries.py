"""The evaluation service (layer L3): would this packet pass, and which rule decides?

Owns: the per-source token buckets of `/v1/evaluate` and the judgement of one request
against the current generation's evaluator (the kernel's semantics), the live blocks and
the egress state (resolved names, sandbox grants). Returns the evaluator's verdict and its
latency; the API renders it. Changes nothing but the buckets, and writes a decision record
when the request asks (`audit: true`) or the policy does (`settings.audit_evaluate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.clock import Clock
from aitherfwd.control.schema import EvaluateSpec
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.generations import Generations
from aitherfwd.decisions import from_verdict
from aitherfwd.dynamic.buckets import TokenBuckets
from aitherfwd.evaluator import GeoLookup, Request, Verdict
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
        *,
        audit: AuditLog | None = None,
    ) -> None:
        self.clock, self.generations, self.blocks = clock, generations, blocks
        self.egress, self.stats, self.audit = egress, stats, audit
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
        judged = Judgement(verdict, round(seconds * 1e6, 1))
        if self.audit is not None and (spec.audit or gen.policy.settings.audit_evaluate):
            record = from_verdict(
                gen.policy,
                verdict,
                source=spec.source,
                dest=spec.dest,
                protocol=spec.protocol,
                port=spec.dest_port,
                direction=spec.direction,
                latency_us=judged.latency_us,
            )
            self.audit.write(self.clock.now(), record)
        return judged
