"""The fleet's decisions coming in (layer L3): what other hosts decided, applied here.

Owns: the application of a fetch of deliveries — single decisions, batches
(fleet/batch.py) and threat events — in the order of the stream (the last word per
address wins), as ONE block batch through the block service (one store transaction, one
kernel batch through the netlink element writer), then unblocks one by one, then the
threat events to the reputation ladder; the rules that keep this host's word final,
judged per decision, batch or not: nothing lands on loopback, the management zone,
`never_block` or a live admin session; a local block is never replaced or lifted by a
fleet decision; our own messages and redeliveries are skipped (by origin and message id),
expired blocks too. Counters count decisions (a batch of 4,096 applied is 4,096), not
messages. The FleetService (daemon/fleet.py) owns the loops and the outbound side.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.audit_records import FleetSkipped
from aitherfwd.clock import Clock
from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.fleet_status import FleetCounters
from aitherfwd.dynamic.blocks import BlockError
from aitherfwd.errors import AitherError
from aitherfwd.fleet import batch as fb
from aitherfwd.fleet import messages as m
from aitherfwd.fleet.messages import Decision, Delivery, SharedThreat
from aitherfwd.policy.model import IPAddress, Severity

if TYPE_CHECKING:
    from aitherfwd.daemon.fleet import ThreatSink

log = logging.getLogger(__name__)
FLEET = "fleet"  # the source of blocks applied from the fleet
MAX_REASON = 200
# Two memories make applying idempotent, both bounded: per consumer, the highest stream
# sequence applied (a redelivery at or below it is a duplicate: the consumer delivers in
# stream order), and the last SEEN_IDS message ids, against a message published again
# after JetStream's duplicate window (a batch is one id however many decisions it holds).
SEEN_IDS = 4096


class Inbound:
    def __init__(  # noqa: PLR0917 - the fleet service's parts
        self,
        me: str,
        clock: Clock,
        blocks: BlockService,
        audit: AuditLog,
        counters: FleetCounters,
        threats: ThreatSink | None,
    ) -> None:
        self.me, self.clock, self.blocks, self.audit, self.c = me, clock, blocks, audit, counters
        self.threat_sink = threats
        self.seen = m.Seen(SEEN_IDS)
        self.floor: dict[str, int] = {}  # consumer -> highest stream sequence applied

    async def apply(self, got: Sequence[Delivery], consumer: str = "decisions") -> None:
        """Apply a fetch of deliveries in their order, then acknowledge them (the last
        one: acknowledgements are cumulative)."""
        now = self.clock.now()
        blocks: dict[str, Decision] = {}
        unblocks: dict[str, Decision] = {}
        threats: list[SharedThreat] = []
        for d in got:
            try:
                msg = fb.decode_any(d.data, d.subject)
            except m.BadMessage as exc:
                self.c.invalid += 1
                log.warning("fleet message dropped subject=%s error=%s", d.subject, exc)
                continue
            decisions = msg.decisions if isinstance(msg, fb.Batch) else (msg,)
            floor = self.floor.get(consumer, 0)
            again = d.redelivered and 0 < d.seq <= floor
            self.floor[consumer] = max(floor, d.seq)
            why = "own" if msg.origin == self.me else ""
            why = why or ("duplicate" if again or msg.id in self.seen else "")
            if why:
                self._skip(why, count=len(decisions))
                continue
            self.seen.add(msg.id)
            self.c.last_at, self.c.last = now, f"{msg.origin} {fb.describe(msg)}"
            for one in decisions:
                if isinstance(one, SharedThreat):
                    threats.append(one)
                elif one.op == m.BLOCK and fb.expired(one, now):
                    self._skip("expired")
                elif one.op == m.BLOCK:
                    unblocks.pop(one.key, None)
                    blocks[one.key] = one
                else:
                    blocks.pop(one.key, None)
                    unblocks[one.key] = one
        try:
            await self._apply_blocks(list(blocks.values()), now)
            for one in unblocks.values():
                await self._apply_unblock(one, now)
            await self._apply_threats(threats)
        finally:
            self.c.lag = got[-1].pending
            try:  # the consumers acknowledge cumulatively: the last one covers the batch
                await got[-1].ack()
            except Exception as exc:  # redelivered later, and applying is idempotent
                log.debug("fleet ack failed error=%s", exc)

    def _skip(
        self, why: str, msg: Decision | None = None, detail: str = "", count: int = 1
    ) -> None:
        self.c.skipped[why] = self.c.skipped.get(why, 0) + count
        if msg is not None:  # only the refusals a person wants to know about are audited
            self.audit.write(
                self.clock.now(),
                FleetSkipped(
                    source_ip=msg.key, origin=msg.origin, op=msg.op, why=why, detail=detail
                ),
            )

    async def _apply_blocks(self, decisions: list[Decision], now: float) -> None:
        """Every decision judged once here, then one block batch (the block service does
        not judge them again: nothing can change the table in between)."""
        if not decisions:
            return
        table = self.blocks.table
        guarded = _lockout(await self.blocks.guarded(), decisions)
        specs = []
        reasons: dict[tuple[str, str], str] = {}  # a batch shares a few: one string each
        ttls: dict[float | None, int | None] = {}
        for d in decisions:
            held = table.get(d.key, now)
            if held is not None and held.source != FLEET:
                self._skip("local", d, f"a {held.source} block of this host holds it")
                continue
            try:
                table.check(d.key, now)
            except BlockError as exc:
                self._skip("protected", d, exc.message)
                continue
            if d.key in guarded:
                self._skip("protected", d, guarded[d.key])
                continue
            reason = reasons.get((d.origin, d.reason))
            if reason is None:
                reason = reasons[d.origin, d.reason] = f"fleet {d.origin}: {d.reason}"[:MAX_REASON]
            if d.expires_at not in ttls:
                ttls[d.expires_at] = d.remaining(now)
            specs.append(BlockSpec(d.key, ttls[d.expires_at], reason))
        del decisions
        if not specs:
            return
        try:
            made = await self.blocks.block(specs, source=FLEET, checked=True)
        except AitherError as exc:  # one bad prefix refuses the batch: go one by one
            log.warning("fleet batch refused; applying one by one error=%s", exc)
            made = []
            for spec in specs:
                try:
                    made += await self.blocks.block([spec], source=FLEET)
                except AitherError as one:
                    self._skip("refused")
                    log.warning("fleet block refused key=%s error=%s", spec.key, one)
        self.c.applied += len(made)

    async def _apply_unblock(self, d: Decision, now: float) -> None:
        held = self.blocks.table.get(d.key, now)
        if held is None:
            self._skip("not_blocked")
            return
        if held.source != FLEET:
            self._skip("local", d, f"a {held.source} block of this host holds it")
            return
        try:
            await self.blocks.unblock(ipaddress.ip_network(d.key))
        except AitherError as exc:
            self._skip("refused")
            log.warning("fleet unblock refused key=%s error=%s", d.key, exc)
            return
        self.c.applied += 1

    async def _apply_threats(self, threats: list[SharedThreat]) -> None:
        if not threats or self.threat_sink is None:
            return
        specs = [
            ThreatSpec(
                t.type,
                ipaddress.ip_address(t.source_ip),
                Severity(t.severity),
                f"fleet {t.origin}",
            )
            for t in threats
        ]
        await self.threat_sink(specs, share=False)
        self.c.applied += len(specs)


def _lockout(guards: list[tuple[IPAddress, str]], decisions: list[Decision]) -> dict[str, str]:
    """The block service's anti-lockout for many keys: a single address is guarded when
    its canonical text is a guarded address's; only prefixes are parsed."""
    if not guards:
        return {}
    singles = {str(a): f"{a} {why}" for a, why in guards}
    out: dict[str, str] = {}
    for d in decisions:
        if "/" not in d.key:
            if d.key in singles:
                out[d.key] = singles[d.key]
            continue
        net = ipaddress.ip_network(d.key)
        for address, why in guards:
            if address.version == net.version and address in net:
                out[d.key] = f"{address} {why}"
                break
    return out
