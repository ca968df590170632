"""The reputation service (layer L3): threat events → decisions → blocks.

Owns: the offenders (scores, escalation history) and their persistence, the per-type
threat counters, the recent events remembered per address until a block takes them into
its history, the escalation audit lines and the outbound notifications of blocks it made.
Blocks go out through the blocks service, like manual ones. Returns typed results; the API
renders them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aitherfwd.adapters.audit import rfc3339
from aitherfwd.adapters.store import Store
from aitherfwd.audit_records import escalation
from aitherfwd.clock import Clock
from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.daemon.blocking import Actor, BlockService
from aitherfwd.daemon.ports import AuditSink, Notifications
from aitherfwd.dynamic import reputation
from aitherfwd.dynamic.blocks import Block, BlockError, address_text
from aitherfwd.dynamic.reputation import Decision, Offender, offender_key
from aitherfwd.policy.model import IPNetwork, Policy, ReputationSettings
from aitherfwd.stats import Stats

# Threat events remembered per offender until a block takes them into its history: the
# last few per address, for the addresses seen most recently, details cut short (bounded
# memory: at most ~10 MB whatever clients send).
YIELD_EVERY = 256  # events scored between two turns of the event loop
RECENT_EVENTS = 10
RECENT_ADDRESSES = 2_000
RECENT_DETAIL = 256
# Offenders kept in memory and on disk at most (~300 bytes each in memory). Beyond it the
# least recently scored one without a block to remember goes first.
MAX_OFFENDERS = 100_000
# Distinct threat types counted by name in /v1/status; later ones are counted as "other".
MAX_THREAT_TYPES = 50
OTHER_TYPE = "other"
# An offender whose decayed score fell below this fraction of the threshold, with no
# block now or within `memory`, is forgotten: it would start again from zero anyway.
NEGLIGIBLE = 0.01
SWEEP_PER_EVENT = 2  # offenders looked at per threat event by the amortised sweep
SWEEP_MIN = 64


@dataclass(frozen=True, slots=True)
class ThreatOutcome:
    accepted: int
    blocked: Sequence[Block]
    protected: list[str]  # offenders a decision would have blocked, but they are protected


@dataclass(frozen=True, slots=True)
class ReputationStatus:
    offenders: int
    threat_events: dict[str, int]


class ReputationService:
    def __init__(  # noqa: PLR0917 - the ports, wired in daemon/services.py
        self,
        clock: Clock,
        blocks: BlockService,
        store: Store,
        audit: AuditSink,
        notifier: Notifications,
        stats: Stats,
    ) -> None:
        self.clock, self.blocks, self.store, self.audit = clock, blocks, store, audit
        self.notifier, self.stats = notifier, stats
        self.settings = ReputationSettings()
        self.offenders: OrderedDict[str, Offender] = OrderedDict()  # least recent first
        self.threat_counts: dict[str, int] = {}
        self.max_offenders = MAX_OFFENDERS
        self.pruned = 0  # offenders forgotten since start (sweep and cap)
        self._sweep: list[str] = []  # keys still to look at in the current sweep round
        self.recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        blocks.on_expired = self._block_expired
        blocks.on_unblocked = self._block_lifted
        # told of the events reported here (the fleet may share them)
        self.on_threats: Callable[[Sequence[ThreatSpec], float], None] = lambda evs, now: None

    def configure(self, policy: Policy) -> None:
        self.settings = policy.reputation
        self.notifier.configure(policy.notify)

    def load(self) -> None:
        """The stored offenders, least recently scored first; the negligible ones and those
        beyond the cap are forgotten here and on disk."""
        now = self.clock.now()
        stored = sorted(self.store.load_offenders().items(), key=lambda kv: kv[1].updated)
        self.offenders = OrderedDict(stored)
        self._sweep = list(self.offenders)
        gone = self._swept(now, len(self._sweep)) + self._capped(now)
        self.store.forget_offenders(gone)

    def status(self) -> ReputationStatus:
        return ReputationStatus(len(self.offenders), dict(sorted(self.threat_counts.items())))

    async def threats(
        self,
        events: Sequence[ThreatSpec],
        actor: Actor | None = None,
        *,
        share: bool = True,
    ) -> ThreatOutcome:
        """Feed threat events to the ladder; blocks it decides on go out through the same
        path as manual ones (store, then one kernel transaction), with one audit line per
        escalation. `share`: tell `on_threats` (the fleet), unless they came from it."""
        now = self.clock.now()
        if share:
            self.on_threats(events, now)
        settings = self.settings
        decisions: dict[str, tuple[IPNetwork, Decision, ThreatSpec]] = {}
        changed: dict[str, Offender] = {}
        counts = self.threat_counts
        for i, ev in enumerate(events):
            if i and not i % YIELD_EVERY:  # a 100,000-event request must not hold the loop
                await asyncio.sleep(0)
            kind = ev.type if ev.type in counts or len(counts) < MAX_THREAT_TYPES else OTHER_TYPE
            counts[kind] = counts.get(kind, 0) + 1
            self.stats.threat(ev.type)
            net = offender_key(ev.source, settings)
            key = address_text(net)
            off, decision = reputation.step(self.offenders.get(key), ev.severity, now, settings)
            self.offenders[key] = changed[key] = off
            self.offenders.move_to_end(key)
            self._remember(key, ev, now)
            if decision is not None:
                decisions[key] = (net, decision, ev)
        gone = self._swept(now, SWEEP_MIN + SWEEP_PER_EVENT * len(events)) + self._capped(now)
        self.store.save_offenders({k: o for k, o in changed.items() if k in self.offenders})
        self.store.forget_offenders(gone)
        specs, refused, led_to = [], [], {}
        reporters = {key: ev.reporter for key, (_, _, ev) in decisions.items()}
        guarded = await self.blocks.lockout([net for net, _, _ in decisions.values()])
        for key, (net, decision, ev) in sorted(decisions.items()):
            try:
                self.blocks.table.check(net, now)
                if key in guarded:
                    raise BlockError(f"{key}: {guarded[key]}", code="E-PROTECTED")
            except BlockError:
                refused.append(key)
                if (held := self.offenders.get(key)) is not None:
                    self.offenders[key] = reputation.lifted(held)
                continue
            reason = f"reputation: {decision.kind} block #{decision.block_number} after {ev.type}"
            specs.append(BlockSpec(key, decision.ttl, reason))
            led_to[key] = list(self.recent.pop(key, ()))
            self.stats.escalated(decision.kind)
            self.audit.write(
                now,
                escalation(decision.kind)(
                    source_ip=key,
                    threat=ev.type,
                    severity=str(ev.severity),
                    block_number=decision.block_number,
                    ttl=decision.ttl,
                    reason=reason,
                    actor=actor,
                ),
            )
        blocked = (
            await self.blocks.block(specs, source="reputation", actor=actor, events=led_to)
            if specs
            else []
        )
        for blk in blocked:
            kind = "permanent" if blk.expires_at is None else "block"
            event = self._event("FIREWALL_IP_BLOCKED", blk, now, led_to)
            event["reporter"] = reporters.get(blk.key)  # not echoed back to it (notify.targets)
            self.notifier.send(kind, event)
        return ThreatOutcome(len(events), blocked, refused)

    # --- bounded memory ----------------------------------------------------------------------

    def _forgettable(self, key: str, off: Offender, now: float) -> bool:
        settings = self.settings
        return (
            not reputation.blocked(off, now)
            and all(now - t >= settings.memory for t in off.blocks)
            and self.blocks.table.get(key, now) is None
        )

    def _swept(self, now: float, budget: int) -> list[str]:
        """Look at up to `budget` offenders of the current sweep round (a snapshot of the
        keys, renewed when done): forget those whose score decayed to nothing. Amortised
        over the events, never a walk of every offender at once."""
        if not self._sweep:
            self._sweep = list(self.offenders)
        floor = self.settings.threshold * NEGLIGIBLE
        gone = []
        for _ in range(min(budget, len(self._sweep))):
            key = self._sweep.pop()
            off = self.offenders.get(key)
            if off is None or reputation.decayed(off, now, self.settings) >= floor:
                continue
            if self._forgettable(key, off, now):
                del self.offenders[key]
                gone.append(key)
        self.pruned += len(gone)
        return gone

    def _capped(self, now: float) -> list[str]:
        """Beyond `max_offenders`, forget the least recently scored; one holding a block
        (or one within memory) is passed over, a bounded number of times."""
        gone: list[str] = []
        skips = 64
        while len(self.offenders) > self.max_offenders:
            key, off = self.offenders.popitem(last=False)
            if skips and not self._forgettable(key, off, now):
                skips -= 1
                self.offenders[key] = off  # to the end: looked at again last
                continue
            gone.append(key)
            self.recent.pop(key, None)
        self.pruned += len(gone)
        return gone

    def _remember(self, key: str, ev: ThreatSpec, now: float) -> None:
        recent = self.recent.get(key)
        if recent is None:
            recent = self.recent[key] = deque(maxlen=RECENT_EVENTS)
            if len(self.recent) > RECENT_ADDRESSES:
                self.recent.popitem(last=False)
        else:
            self.recent.move_to_end(key)
        recent.append(
            {
                "type": ev.type,
                "severity": str(ev.severity),
                "at": rfc3339(now),
                "detail": ev.detail[:RECENT_DETAIL],
            }
        )

    def _block_lifted(self, blk: Block, now: float) -> None:
        """An administrator lifted a block: the offender starts over below the threshold."""
        off = self.offenders.get(blk.key)
        if off is not None:
            self.offenders[blk.key] = reputation.lifted(off)
            self.store.save_offenders({blk.key: self.offenders[blk.key]})
        if blk.source == "reputation":
            self.notifier.send("unblock", self._event("FIREWALL_IP_UNBLOCKED", blk, now))

    def _block_expired(self, blk: Block, now: float) -> None:
        if blk.source == "reputation":
            self.notifier.send("expire", self._event("FIREWALL_IP_UNBLOCKED", blk, now))

    def _event(
        self,
        kind: str,
        blk: Block,
        now: float,
        led_to: dict[str, list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """The outbound notification: shaped like a threat event, so Sentry can ingest it."""
        return {
            "type": kind,
            "source_ip": blk.key,
            "severity": "critical" if blk.expires_at is None else "high",
            "detail": blk.reason,
            "observed_at": rfc3339(now),
            "block": {
                "kind": "permanent" if blk.expires_at is None else "temporary",
                "expires_at": rfc3339(blk.expires_at) if blk.expires_at is not None else None,
                "events": (led_to or {}).get(blk.key, []),
            },
        }
