"""Which decisions of the layer-7 enforcement points become audit lines (layer L1, pure:
no I/O, time passed in).

Owns: `DecisionSampler`, the bound on the decision records of the ASGI middleware (every
recorded decision) and of the tool-call gateway (its rate-limited calls, the only ones a
caller can repeat without bound), so a flood cannot fill the disk nor hide the decisions of
other rules and clients:

- per rule, verdict and client (the middleware's client address; the gateway's agent and
  address), at most `per_source` lines a second (a token bucket, burst the same: the
  first decision of a client is always written);
- per rule and verdict, at most `per_rule` lines a second (the middleware passes the
  policy's `settings.audit_decisions`, the daemon's bound for its kernel decisions; `0`
  writes none);
- the decisions left out are counted per rule, verdict and client, and every `interval`
  seconds one line per such key stands for them (`count`, the last of them described;
  OCSF's `count`); the next line written for a key carries what was left out since its
  previous line in its `count` as well. Beyond `pending_keys` keys with counts at once,
  the others of a rule and verdict are counted together on one line (never more lines,
  never a lost count).

The token buckets are `aitherfwd.decisions.Sampler`, the daemon's. Not thread-safe: the
caller holds a lock (asgi/auditing.py, gateway/service.py). Must not import adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from aitherfwd.audit_records import HttpDecision, ToolDecision
from aitherfwd.decisions import Sampler

R = TypeVar("R", HttpDecision, ToolDecision)

DEFAULT_PER_SOURCE = 1
DEFAULT_INTERVAL = 10.0
PENDING_KEYS = 256


@dataclass(slots=True)
class _Pending(Generic[R]):
    count: int
    last: R


def _source(record: HttpDecision | ToolDecision) -> str:
    if isinstance(record, ToolDecision):
        return f"{record.agent}@{record.source_ip}"
    return record.source_ip


class DecisionSampler(Generic[R]):
    def __init__(
        self,
        per_source: int = DEFAULT_PER_SOURCE,
        interval: float = DEFAULT_INTERVAL,
        pending_keys: int = PENDING_KEYS,
    ) -> None:
        self.sources = Sampler(per_source)
        self.rules = Sampler(0)
        self.interval = interval
        self.pending_keys = pending_keys
        self._pending: dict[str, _Pending[R]] = {}
        self._flushed = 0.0
        self.lines = 0  # records returned to be written
        self.left_out = 0  # decisions counted on a later line instead of their own

    def offer(self, record: R, per_rule: int, now: float) -> R | None:
        """The record to write now (its `count` includes what was left out before it), or
        None when it is only counted."""
        rule = f"{record.verdict} {record.rule_name or '-'}"
        key = f"{rule} {_source(record)}"
        if self.rules.rate != per_rule:
            self.rules = Sampler(per_rule)
        if self.sources.take(key, now) and self.rules.take(rule, now):
            before = self._pending.pop(key, None)
            self.lines += 1
            return record if before is None else replace(record, count=before.count + 1)
        self.left_out += 1
        if key not in self._pending and len(self._pending) >= self.pending_keys:
            key = f"{rule} *"  # the overflow of this rule and verdict
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(1, record)
        else:
            pending.count += 1
            pending.last = record
        return None

    def flush(self, now: float, *, final: bool = False) -> list[R]:
        """One line per key with decisions left out, once per `interval` (or now, final)."""
        if not final and now - self._flushed < self.interval:
            return []
        self._flushed = now
        out = [replace(p.last, count=p.count) for p in self._pending.values()]
        self._pending.clear()
        self.lines += len(out)
        return out
