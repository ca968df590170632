"""The fleet service (layer L3): this host's decisions out to the bus, the fleet's in.

Owns: turning blocks and unblocks this host makes into `Decision`s in the outbox (the
state store; the ban path never waits on the bus), publishing the outbox when the bus is
up (retried, in order per subject), the durable consumers' loops that apply what other
hosts decided — as blocks of source `fleet`, reason naming the origin host, with the
same absolute expiry — and the rules that keep this host's word final: nothing lands on
loopback, the management zone, `never_block` or a live admin session; a local block is
never replaced or lifted by a fleet decision; our own messages coming back and
redeliveries are skipped by origin and message id. Shared threat events feed the local
reputation ladder. Knows nothing of NATS (the `Bus` port) or HTTP (daemon/fleet_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aitherfwd.adapters import memory
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.outbox import Outbox, Row
from aitherfwd.audit_records import FleetBus, FleetSkipped
from aitherfwd.clock import Clock
from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.fleet_policy import FleetPolicy
from aitherfwd.daemon.fleet_status import FleetCounters, FleetStatus
from aitherfwd.daemon.ports import Bus
from aitherfwd.dynamic.blocks import Block, BlockError
from aitherfwd.errors import AitherError
from aitherfwd.fleet import messages as m
from aitherfwd.fleet.messages import BusError, Decision, Delivery, SharedThreat
from aitherfwd.fleet.settings import FleetSettings
from aitherfwd.policy.model import Severity
from aitherfwd.stats import FleetValues

log = logging.getLogger(__name__)

SHARED_SOURCES = frozenset({"reputation", "detection"})  # automatic blocks go out by default
FLEET = "fleet"  # the source of blocks applied from the fleet
FETCH_BATCH, FETCH_WAIT = 2000, 1.0  # messages per fetch; seconds a fetch waits for them
PUBLISH_BATCH = 512
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # seconds between connection attempts (doubling)
MAX_REASON = 200


class ThreatSink(Protocol):
    """ReputationService.threats: the ladder that shared events climb."""

    def __call__(
        self, events: Sequence[ThreatSpec], actor: dict[str, int] | None = None, *, share: bool
    ) -> Awaitable[Any]: ...


class FleetService:
    def __init__(  # noqa: PLR0917 - the ports, wired in daemon/services.py
        self,
        settings: FleetSettings,
        bus: Bus,
        clock: Clock,
        blocks: BlockService,
        outbox: Outbox,
        audit: AuditLog,
        threats: ThreatSink | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.s, self.bus, self.clock, self.blocks = settings, bus, clock, blocks
        self.outbox, self.audit, self.threat_sink = outbox, audit, threats
        # ids: a random prefix per start and a counter, unique in the fleet and cheap
        prefix, counter = secrets.token_hex(8), itertools.count()
        self.new_id = new_id or (lambda: f"{prefix}{next(counter):08x}")
        self.seen = m.Seen()
        self.c = FleetCounters()
        self._wake = asyncio.Event()
        self._was_up = False
        self._since_trim = 0  # messages applied since the heap was last trimmed
        self.last_error = ""
        self.policy: FleetPolicy | None = None  # push (any host) and follow ("policy")
        before_block, before_unblock = blocks.on_blocked, blocks.on_unblocked

        def blocked(made: list[Block], now: float) -> None:
            before_block(made, now)
            self._blocked(made, now)

        def unblocked(blk: Block, now: float) -> None:
            before_unblock(blk, now)
            self._unblocked(blk, now)

        blocks.on_blocked, blocks.on_unblocked = blocked, unblocked

    def status(self) -> FleetStatus:
        c = self.c
        return FleetStatus(
            self.s.name,
            self.s.host,
            sorted(self.s.share),
            self.bus.connected,
            str(getattr(self.bus, "server", "")),
            self.last_error or str(getattr(self.bus, "last_error", "")),
            self.outbox.count,
            self.outbox.dropped,
            c.published,
            c.applied,
            dict(sorted(c.skipped.items())),
            c.invalid,
            c.lag,
            c.last_at,
            c.last,
            self.policy.status() if self.policy and self.s.shares("policy") else None,
        )

    def values(self) -> FleetValues:
        """The metrics' view (O(1) but for the few skip reasons)."""
        c = self.c
        return FleetValues(
            self.bus.connected,
            self.outbox.count,
            self.outbox.dropped,
            c.published,
            c.applied,
            c.invalid,
            c.lag,
            tuple(sorted(c.skipped.items())),
        )

    # --- this host's decisions out ------------------------------------------------------

    def _blocked(self, made: list[Block], now: float) -> None:
        if self.s.shares("blocks"):
            self.share_blocks([b for b in made if b.source in SHARED_SOURCES], now)

    def _unblocked(self, blk: Block, now: float) -> None:
        if self.s.shares("blocks") and blk.source in SHARED_SOURCES:
            self.share_unblock(blk.key, now)

    def share_blocks(self, made: Sequence[Block], now: float) -> int:
        """Queue blocks this host made for the fleet (an outbox row each)."""
        rows = [
            self._row(
                Decision(
                    self._id(),
                    m.BLOCK,
                    b.key,
                    self.s.host,
                    now,
                    b.expires_at,
                    b.reason[:MAX_REASON],
                )
            )
            for b in made
        ]
        self.outbox.add(rows)
        self._wake.set()
        return len(rows)

    def share_unblock(self, key: str, now: float) -> None:
        self.outbox.add([self._row(Decision(self._id(), m.UNBLOCK, key, self.s.host, now))])
        self._wake.set()

    def share_threats(self, events: Sequence[ThreatSpec], now: float) -> None:
        if not self.s.shares("threats"):
            return
        rows: list[Row] = []
        for ev in events:
            msg = SharedThreat(
                self._id(), self.s.host, now, ev.type, str(ev.source), str(ev.severity)
            )
            rows.append((m.threat_subject(self.s.name, self.s.host), msg.id, m.encode(msg)))
        self.outbox.add(rows)
        self._wake.set()

    def _id(self) -> str:
        return f"{self.s.host}.{self.new_id()}"

    def _row(self, d: Decision) -> Row:
        return (m.decision_subject(self.s.name, self.s.host, d.key), d.id, m.encode(d))

    # --- the loops ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (and reconnect), publish, consume: one failing loop ends them all."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connect())
            tg.create_task(self._publish())
            tg.create_task(self._consume("decisions"))
            if self.s.shares("threats"):
                tg.create_task(self._consume("threats"))
            if self.s.shares("policy") and self.policy is not None:
                tg.create_task(self.policy.follow())

    async def close(self) -> None:
        await self.bus.close()

    async def _connect(self) -> None:
        delay = RETRY_MIN
        while True:
            up = self.bus.connected
            if up != self._was_up:
                self._was_up = up
                self._audit_bus(up)
            if up:
                delay = RETRY_MIN
                await asyncio.sleep(0.5)
                continue
            try:
                await self.bus.connect()
                self.last_error = ""
                self._wake.set()
            except BusError as exc:
                self.last_error = exc.message
                log.warning("fleet bus unreachable; retrying delay=%.1f error=%s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _audit_bus(self, up: bool) -> None:
        state = "connected" if up else "disconnected"
        server = str(getattr(self.bus, "server", ""))
        log.warning("fleet bus %s server=%s", state, server)
        self.audit.write(self.clock.now(), FleetBus(state=state, server=server, fleet=self.s.name))

    async def _publish(self) -> None:
        while True:
            if not self.outbox.count or not self.bus.connected:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            sent = await self.publish_some()
            if not sent:
                await asyncio.sleep(0.5)

    async def publish_some(self) -> int:
        """Publish the oldest rows of the outbox (pipelined, at most one per subject so
        that a retry cannot reorder them); remove what the bus acknowledged."""
        batch: list[tuple[int, str, str, bytes]] = []
        subjects: set[str] = set()
        for row in self.outbox.oldest(PUBLISH_BATCH):
            if row[1] in subjects:
                break
            subjects.add(row[1])
            batch.append(row)
        try:
            acked = await self.bus.publish([(subj, data, mid) for _, subj, mid, data in batch])
        except BusError as exc:
            self.last_error = exc.message
            return 0
        done = [row[0] for row, ok in zip(batch, acked, strict=True) if ok]
        self.outbox.remove(done)
        self.c.published += len(done)
        return len(done)

    async def _consume(self, consumer: str) -> None:
        while True:
            if not self.bus.connected:
                await asyncio.sleep(0.2)
                continue
            try:
                got = await self.bus.fetch(consumer, FETCH_BATCH, FETCH_WAIT)
            except BusError as exc:
                self.last_error = exc.message
                await asyncio.sleep(0.5)
                continue
            if got:
                await self.apply(got)
                self._since_trim += len(got)
                if not got[-1].pending and self._since_trim >= memory.LARGE_BATCH:
                    self._since_trim = 0  # a catch-up is over: its batches are garbage now
                    memory.trim()

    # --- the fleet's decisions in -------------------------------------------------------

    async def apply(self, got: Sequence[Delivery]) -> None:
        """Apply a batch of deliveries in their order (the last word per address wins),
        then acknowledge them (the last one: acknowledgements are cumulative)."""
        now = self.clock.now()
        blocks: dict[str, Decision] = {}
        unblocks: dict[str, Decision] = {}
        threats: list[SharedThreat] = []
        for d in got:
            try:
                msg = m.decode(d.data)
                if d.subject and m.subject_host(d.subject) != msg.origin:
                    raise m.BadMessage(f"origin {msg.origin} published under {d.subject}")
            except m.BadMessage as exc:
                self.c.invalid += 1
                log.warning("fleet message dropped error=%s", exc)
                continue
            why = m.first_look(msg, self.s.host, now, self.seen)
            if why is not None:
                self._skip(why)
                continue
            self.seen.add(msg.id)
            self.c.last_at, self.c.last = now, f"{msg.origin} {m.describe(msg)}"
            if isinstance(msg, SharedThreat):
                threats.append(msg)
            elif msg.op == m.BLOCK:
                unblocks.pop(msg.key, None)
                blocks[msg.key] = msg
            else:
                blocks.pop(msg.key, None)
                unblocks[msg.key] = msg
        try:
            await self._apply_blocks(list(blocks.values()), now)
            for msg in unblocks.values():
                await self._apply_unblock(msg, now)
            await self._apply_threats(threats)
        finally:
            self.c.lag = got[-1].pending
            try:  # the consumers acknowledge cumulatively: the last one covers the batch
                await got[-1].ack()
            except Exception as exc:  # redelivered later, and applying is idempotent
                log.debug("fleet ack failed error=%s", exc)

    def _skip(self, why: str, msg: Decision | None = None, detail: str = "") -> None:
        self.c.skipped[why] = self.c.skipped.get(why, 0) + 1
        if msg is not None:  # only the refusals a person wants to know about are audited
            self.audit.write(
                self.clock.now(),
                FleetSkipped(
                    source_ip=msg.key, origin=msg.origin, op=msg.op, why=why, detail=detail
                ),
            )

    async def _apply_blocks(self, decisions: list[Decision], now: float) -> None:
        table = self.blocks.table
        guarded = await self.blocks.lockout([_network(d.key) for d in decisions])
        specs = []
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
            reason = f"fleet {d.origin}: {d.reason}"[:MAX_REASON]
            specs.append(BlockSpec(d.key, d.remaining(now), reason))
        if not specs:
            return
        try:
            made = await self.blocks.block(specs, source=FLEET)
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


def _network(key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of a canonical key; single IPv4 addresses without parsing text twice."""
    if "/" in key or ":" in key:
        return ipaddress.ip_network(key)
    return ipaddress.IPv4Network((int(ipaddress.IPv4Address(key)), 32))
