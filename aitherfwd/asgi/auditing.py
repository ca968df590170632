"""The middleware's decisions in an audit trail (docs/middleware.md, *Audit*).

Owns: `MiddlewareAudit` — which decisions are recorded (denials under the policy's
`settings.log_denied`, the default; allows of a rule under `settings.log_allowed`, or every
allow with `audit_allowed`), the `decision` record of each (audit_records.HttpDecision,
OCSF HTTP Activity), the sampling (aitherfwd/audit_sample.py) under a lock, and the writing, which
never happens on the event loop: records go into a bounded queue that a writer thread
empties into an `AuditLog` (adapters/audit_queue.py; rotated at 50 MB like the daemon's).
The sampler's aggregated lines are written by that thread every second it looks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from aitherfwd.adapters.audit import DEFAULT_MAX_BYTES, AuditLog
from aitherfwd.adapters.audit_queue import DEFAULT_CAPACITY, QueuedAudit
from aitherfwd.asgi.view import BYPASS, View
from aitherfwd.audit_records import HttpDecision, http_decision
from aitherfwd.audit_sample import DEFAULT_INTERVAL, DEFAULT_PER_SOURCE, DecisionSampler
from aitherfwd.decisions import service_of
from aitherfwd.evaluator import Verdict
from aitherfwd.policy.model import IPAddress, Settings

Scope = MutableMapping[str, Any]
MAX_PATH = 256
MAX_METHOD = 16
_DEFAULTS = Settings()  # with no policy yet (fail open, 503)


class MiddlewareAudit:
    def __init__(
        self,
        path: str | Path,
        *,
        audit_allowed: bool = False,
        per_source: int = DEFAULT_PER_SOURCE,
        interval: float = DEFAULT_INTERVAL,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audit_allowed = audit_allowed
        self.clock = clock
        self.sampler: DecisionSampler[HttpDecision] = DecisionSampler(per_source, interval)
        self._lock = threading.Lock()
        self.sink = QueuedAudit(
            AuditLog(Path(path), max_bytes=max_bytes),
            capacity=capacity,
            on_tick=self._tick,
            tick=min(1.0, max(0.1, interval)),  # the writer looks at least every second
            clock=clock,
        )

    def wanted(self, verdict: Verdict, view: View | None) -> bool:
        """Is this decision recorded at all (before sampling)?"""
        settings = view.policy.settings if view is not None else _DEFAULTS
        if verdict.verdict != "allow":
            return settings.log_denied
        if self.audit_allowed:
            return True
        return settings.log_allowed and verdict.rule is not None and verdict.reason != BYPASS

    def record(  # noqa: PLR0917 - one decision's facts
        self,
        scope: Scope,
        view: View | None,
        verdict: Verdict,
        client: IPAddress | None,
        peer: IPAddress,
        port: int,
        refusal: tuple[int, str] | None,
        latency_us: float,
    ) -> None:
        """Record one decision (sampled; queued, never written here)."""
        if not self.wanted(verdict, view):
            return
        rec = build(scope, view, verdict, client, peer, port, refusal, latency_us)
        per_rule = (view.policy.settings if view is not None else _DEFAULTS).audit_decisions
        now = self.clock()
        with self._lock:
            out = self.sampler.offer(rec, per_rule, now)
        if out is not None:
            self.sink.write(now, out)

    def _tick(self, now: float, final: bool) -> list[HttpDecision]:
        with self._lock:
            return self.sampler.flush(now, final=final)

    def stats(self) -> dict[str, int]:
        return {
            "audit_lines": self.sampler.lines,
            "audit_left_out": self.sampler.left_out,
            "audit_dropped": self.sink.dropped,
            "audit_errors": self.sink.errors,
        }

    def reopen(self) -> None:
        self.sink.reopen()

    def close(self) -> None:
        self.sink.close()


def build(  # noqa: PLR0917 - one decision's facts
    scope: Scope,
    view: View | None,
    verdict: Verdict,
    client: IPAddress | None,
    peer: IPAddress,
    port: int,
    refusal: tuple[int, str] | None,
    latency_us: float,
) -> HttpDecision:
    """The `decision` record of one request (client None: its forwarding header was
    malformed, and the peer is named)."""
    source = client if client is not None else peer
    zone = verdict.zone
    if zone is None and view is not None:
        zone = view.zone(source)
    server = scope.get("server")
    kind = str(scope.get("type", "http"))
    method = "GET" if kind == "websocket" else str(scope.get("method", "GET"))
    policy = view.policy if view is not None else None
    return http_decision(verdict.verdict)(
        verdict=verdict.verdict,
        rule_name=verdict.rule,
        zone=zone,
        source_ip=str(source),
        dest_service=service_of(policy, "tcp", port),
        reason=verdict.reason,
        latency_us=round(latency_us, 1),
        dest_ip=str(server[0]) if server and server[0] is not None else None,
        dest_port=port,
        method=method[:MAX_METHOD],
        path=str(scope.get("path", "/"))[:MAX_PATH],
        status=refusal[0] if refusal is not None else None,
        request_id=refusal[1] if refusal is not None else None,
        peer_ip=str(peer),
        kind=kind,
        origin="middleware",
    )
