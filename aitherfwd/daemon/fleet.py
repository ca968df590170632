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
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aitherfwd.adapters import memory
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.outbox import Outbox, Row
from aitherfwd.audit_records import FleetBus
from aitherfwd.clock import Clock
from aitherfwd.control.schema import ThreatSpec
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.fleet_inbound import FLEET, MAX_REASON, Inbound
from aitherfwd.daemon.fleet_policy import FleetPolicy
from aitherfwd.daemon.fleet_status import FleetCounters, FleetStatus
from aitherfwd.daemon.ports import Bus
from aitherfwd.dynamic.blocks import Block
from aitherfwd.fleet import batch as fb
from aitherfwd.fleet import messages as m
from aitherfwd.fleet.messages import BusError, Decision, Delivery, SharedThreat
from aitherfwd.fleet.settings import FleetSettings
from aitherfwd.stats import FleetValues

log = logging.getLogger(__name__)

SHARED_SOURCES = frozenset({"reputation", "detection"})  # automatic blocks go out by default
__all__ = ["FLEET", "FleetService"]
# Messages per fetch: up to FETCH_MAX single decisions, but FETCH_MIN right after a fetch
# that held a batch (up to 4,096 decisions and 256 KiB each) or at the start; doubled
# while fetches come back full of single decisions. FETCH_WAIT: seconds a fetch waits.
FETCH_MIN, FETCH_MAX, FETCH_WAIT = 8, 2000, 1.0
PUBLISH_BATCH = 512  # outbox rows published at once (a row: a decision or a batch chunk)
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # seconds between connection attempts (doubling)
TRIM_BYTES = 1_000_000  # of messages applied before the heap is trimmed (≈ 10,000 decisions)


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
        self.c = FleetCounters()
        self.inbound = Inbound(settings.host, clock, blocks, audit, self.c, threats)
        self._wake = asyncio.Event()
        self._was_up = False
        self._since_trim = 0  # bytes of messages applied since the heap was last trimmed
        self.last_error = ""
        self.policy: FleetPolicy | None = None  # push (any host) and follow ("policy")
        before_block, before_unblock = blocks.on_blocked, blocks.on_unblocked

        def blocked(made: Sequence[Block], now: float) -> None:
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

    def _blocked(self, made: Sequence[Block], now: float) -> None:
        if self.s.shares("blocks"):
            self.share_blocks([b for b in made if b.source in SHARED_SOURCES], now)

    def _unblocked(self, blk: Block, now: float) -> None:
        if self.s.shares("blocks") and blk.source in SHARED_SOURCES:
            self.share_unblock(blk.key, now)

    def share_blocks(self, made: Sequence[Block], now: float) -> int:
        """Queue blocks this host made for the fleet: one block as a single decision on its
        address's subject, more as a batch (one outbox row per chunk of up to 4,096)."""
        if len(made) == 1:
            b = made[0]
            one = Decision(self._id(), m.BLOCK, b.key, self.s.host, now, b.expires_at, b.reason)
            self.outbox.add([self._row(one)])
        elif made:
            items = [(b.key, b.expires_at, b.reason[:MAX_REASON]) for b in made]
            self.outbox.add(
                [
                    (fb.batch_subject(self.s.name, self.s.host, msg_id), msg_id, data, n)
                    for msg_id, data, n in fb.chunks(self.s.host, now, items, self._id)
                ]
            )
        self._wake.set()
        return len(made)

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
            rows.append((m.threat_subject(self.s.name, self.s.host), msg.id, m.encode(msg), 1))
        self.outbox.add(rows)
        self._wake.set()

    def _id(self) -> str:
        return f"{self.s.host}.{self.new_id()}"

    def _row(self, d: Decision) -> Row:
        d = Decision(d.id, d.op, d.key, d.origin, d.at, d.expires_at, d.reason[:MAX_REASON])
        return (m.decision_subject(self.s.name, self.s.host, d.key), d.id, m.encode(d), 1)

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
        """Publish the oldest rows of the outbox, pipelined where a retry cannot reorder
        them: single decisions at most one per subject (an address's block and unblock
        keep their order), a batch alone — after every older row was acknowledged, and
        before any newer one is sent — since it shares addresses with other subjects (a
        later unblock must never land before the batch it lifts). Remove what the bus
        acknowledged."""
        batch: list[tuple[int, str, str, bytes, int]] = []
        subjects: set[str] = set()
        for row in self.outbox.oldest(PUBLISH_BATCH):
            alone = fb.is_batch_subject(row[1])
            if row[1] in subjects or (alone and batch):
                break
            subjects.add(row[1])
            batch.append(row)
            if alone:
                break
        try:
            acked = await self.bus.publish([(subj, data, mid) for _, subj, mid, data, _ in batch])
        except BusError as exc:
            self.last_error = exc.message
            return 0
        done = [(row[0], row[4]) for row, ok in zip(batch, acked, strict=True) if ok]
        self.outbox.remove(done)
        decisions = sum(n for _, n in done)
        self.c.published += decisions
        return decisions

    async def _consume(self, consumer: str) -> None:
        size = FETCH_MIN
        while True:
            if not self.bus.connected:
                await asyncio.sleep(0.2)
                continue
            try:
                got = await self.bus.fetch(consumer, size, FETCH_WAIT)
            except BusError as exc:
                self.last_error = exc.message
                await asyncio.sleep(0.5)
                continue
            if not got:
                continue
            size = _next_size(size, got)
            pending = got[-1].pending
            self._since_trim += sum(len(d.data) for d in got)
            await self.apply(got, consumer)
            del got
            if not pending and self._since_trim >= TRIM_BYTES:
                self._since_trim = 0  # a catch-up or a bulk batch is over: garbage now
                memory.trim()

    async def apply(self, got: Sequence[Delivery], consumer: str = "decisions") -> None:
        """Apply a fetch of deliveries (daemon/fleet_inbound.py)."""
        await self.inbound.apply(got, consumer)


def _next_size(size: int, got: Sequence[Delivery]) -> int:
    """FETCH_MIN after a batch message (bounded memory per fetch), doubled up to
    FETCH_MAX while fetches come back full of single decisions."""
    if any(len(d.data) > m.MAX_MESSAGE for d in got):
        return FETCH_MIN
    return min(FETCH_MAX, size * 2) if len(got) >= size else size
