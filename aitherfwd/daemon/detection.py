"""Detection wiring (layer L3): kernel reports and conntrack accounting → the daemon's
threat path.

Owns: the NFLOG reader and the conntrack event socket on the event loop (add_reader), the
periodic tick (grace periods, half-open floods, settings picked up after a reload), the
full conntrack resync (every `conntrack_resync_interval` seconds and after event loss, in a
worker thread), decision records of what the kernel reported (aitherfwd/decisions.py,
sampled per rule), and the `detection`/`conntrack` sections of GET /v1/status. Threat events
go to the reputation service (`threats`, injected), one batch at a time, so detections
climb the same reputation ladder as reported ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aitherfwd.adapters import ctnetlink, memory
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.nflog import NflogReader
from aitherfwd.clock import Clock
from aitherfwd.control.schema import ThreatSpec
from aitherfwd.decisions import Sampler, from_denial
from aitherfwd.dynamic.ctcount import CtTable
from aitherfwd.dynamic.detect import Denial, Detector, Threat
from aitherfwd.errors import AitherError
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Policy, Settings

log = logging.getLogger(__name__)
TICK = 0.25  # seconds between grace-period checks
HELD_EVENTS = 100_000  # events held during one dump at most (~25 MB); beyond, resync again
MIN_RESYNC_GAP = 1.0  # seconds: sustained event loss must not turn into back-to-back dumps


ThreatSink = Callable[[Sequence[ThreatSpec]], Awaitable[object]]


class Detection:
    def __init__(
        self,
        clock: Clock,
        audit: AuditLog,
        threats: ThreatSink,
        resync_interval: float,
        settings: Settings | None = None,
        *,
        listen: bool = True,
    ) -> None:
        self.clock, self.audit, self.threats = clock, audit, threats
        self.listen = listen  # False: no kernel sockets, no dumps (fake ports in tests)
        self.resync_interval = resync_interval
        self.detector = Detector(settings or Settings())
        self.policy: Policy | None = None  # names zones and services in decision records
        self.sampler = Sampler(self.detector.settings.audit_decisions)
        self.table = CtTable()
        self.nflog: NflogReader | None = None
        self.events: ctnetlink.CtEvents | None = None
        self.resyncs = 0
        self.resync_failures = 0
        self.last_resync_ms = 0.0
        self.threats_sent = 0
        self._pending: list[Threat] = []
        self._wake = asyncio.Event()
        self._resync_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._held: list[bytes] | None = None  # events read while a dump runs
        self._held_lost = False

    # --- lifecycle -------------------------------------------------------------------------

    def configure(self, policy: Policy) -> None:
        """A policy took effect: thresholds and grace periods from its settings."""
        self.detector.settings = policy.settings
        self.policy = policy
        if self.sampler.rate != policy.settings.audit_decisions:
            self.sampler = Sampler(policy.settings.audit_decisions)

    async def run(self) -> None:
        """Listen and run the loops until cancelled; then close the sockets. A loop that
        crashes ends this task (and so the daemon's task group)."""
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.close()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.listen:
            self._tasks = [loop.create_task(self._submitter(), name="detect-threats")]
            return
        try:
            self.nflog = NflogReader(n.DETECT_GROUP)
            loop.add_reader(self.nflog.fileno(), self._on_nflog)
        except AitherError as exc:
            log.error("port-scan and flood reports unavailable error=%s", exc.message)
        try:
            self.events = ctnetlink.CtEvents()
            loop.add_reader(self.events.fileno(), self._on_conntrack)
        except AitherError as exc:
            log.error("conntrack events unavailable error=%s", exc.message)
        self._resync_now.set()  # the first dump runs in the background
        self._tasks = [
            loop.create_task(self._ticker(), name="detect-tick"),
            loop.create_task(self._resyncer(), name="conntrack-resync"),
            loop.create_task(self._submitter(), name="detect-threats"),
        ]

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for src in (self.nflog, self.events):
            if src is not None:
                loop.remove_reader(src.fileno())
                src.close()
        self.nflog = self.events = None

    # --- kernel reports --------------------------------------------------------------------

    def _on_nflog(self) -> None:
        if self.nflog is None:
            return
        try:
            denials = self.nflog.read()
        except OSError as exc:  # not event loss (counted inside): the socket itself failed
            log.error("NFLOG socket failed, scan detection stops error=%s", exc)
            self._drop("nflog")
            return
        now = self.clock.now()
        for d in denials:
            if d.kind not in (n.KIND_EGRESS, n.KIND_ALLOWED):
                self._pending += self.detector.denied(d, now)
            self._record(d, now)
        if self._pending:
            self._wake.set()

    def _record(self, d: Denial, now: float) -> None:
        """A decision record, sampled per rule (`settings.audit_decisions`); denials only
        under `log_denied` (egress denials are only reported then)."""
        if d.kind != n.KIND_ALLOWED and not self.detector.settings.log_denied:
            return
        if self.sampler.take(f"{d.kind} {d.rule}", now):
            self.detector.stats.sampled += 1
            self.audit.write(now, from_denial(d, self.policy))

    def _on_conntrack(self) -> None:
        if self.events is None:
            return
        try:
            datagrams, complete = self.events.receive()
        except OSError as exc:  # not event loss (counted inside): the socket itself failed
            log.error("conntrack event socket failed, dumps only from now error=%s", exc)
            self._drop("events")
            return
        if self._held is None:
            self.events.apply(datagrams, self.table)
            if not complete:
                self._resync_now.set()  # events were lost: the counts need a full dump
            return
        # a dump is running: keep reading (the kernel's buffer must not overflow meanwhile)
        # and apply these events on top of the dump once it is in
        self._held += datagrams
        if not complete or len(self._held) > HELD_EVENTS:
            self._held_lost = True
            self._held.clear()

    def _drop(self, which: str) -> None:
        src = self.nflog if which == "nflog" else self.events
        if src is not None:
            asyncio.get_running_loop().remove_reader(src.fileno())
            src.close()
        if which == "nflog":
            self.nflog = None
        else:
            self.events = None

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            settings = self.detector.settings
            threats = self.detector.tick(
                self.clock.now(),
                self.table.count,
                self.table.half_open_over(settings.syn_flood_threshold),
            )
            if threats:
                self._pending += threats
                self._wake.set()

    async def _submitter(self) -> None:
        """One `threats` call per batch of detections: they queue while a block is applied."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            specs = [ThreatSpec(t.type, t.source, t.severity, t.detail) for t in batch]
            self.threats_sent += len(specs)
            try:
                await self.threats(specs)
            except AitherError as exc:
                log.error("detected threats not applied code=%s error=%s", exc.code, exc.message)
            except Exception:
                log.exception("detected threats not applied")

    # --- conntrack resync ------------------------------------------------------------------

    async def _resyncer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync_now.wait(), self.resync_interval)
            self._resync_now.clear()
            await self._resync()
            await asyncio.sleep(MIN_RESYNC_GAP)

    async def _resync(self) -> None:
        """A full dump in a worker thread; events read meanwhile are held and applied on
        top of the dump afterwards (ids make them idempotent)."""
        started = time.perf_counter()
        self._held, self._held_lost = [], False
        try:
            table = await asyncio.to_thread(ctnetlink.dump)
        except AitherError as exc:
            self.resync_failures += 1
            log.warning("conntrack resync failed error=%s", exc.message)
            table = None
        held, self._held = self._held or [], None
        if self.events is not None:
            self.events.apply(held, table if table is not None else self.table)
        del held
        if self._held_lost:
            self._resync_now.set()
        if table is not None:
            old, self.table = self.table, table
            self.resyncs += 1
            if len(old) >= memory.LARGE_BATCH or len(table) >= memory.LARGE_BATCH:
                del old
                memory.trim()  # the replaced table and the dump's buffers are garbage now
        if table is None:
            return
        self.last_resync_ms = round((time.perf_counter() - started) * 1000, 1)

    def may_hold(self, source: bytes) -> bool:
        """Whether the kernel's conntrack may hold entries of this source (packed address).
        False only when the event-fed table is complete — events live, a full dump taken,
        no event lost since, no dump running — and knows no entry of it: the blocks service
        then skips its conntrack cut (a walk of the kernel's whole conntrack hash). An entry
        whose NEW event is still unread keeps its state until its timeout; its packets are
        dropped all the same (the drop comes before the established rule)."""
        if self.events is None or not self.resyncs or self._held is not None:
            return True
        return self._resync_now.is_set() or source in self.table.tracked

    # --- status ----------------------------------------------------------------------------

    def entries(self) -> int:
        """Tracked connections in the daemon's accounting (metrics read this)."""
        return len(self.table)

    def max_per_source(self) -> int:
        """The largest number of tracked connections of one source (metrics read this)."""
        return self.table.max_per_source()

    def status(self) -> dict[str, Any]:
        st = self.detector.stats
        return {
            "conntrack": {
                "entries": self.entries(),
                "max_per_source": self.max_per_source(),
                "sources": len(self.table.tracked),
                "half_open": sum(self.table.half_open.values()),
                "top_sources": self.table.top(5),
                "resyncs": self.resyncs,
                "resync_failures": self.resync_failures,
                "last_resync_ms": self.last_resync_ms,
                "events": self.events.stats.events if self.events else 0,
                "events_lost": self.events.stats.lost if self.events else 0,
                "listening": self.events is not None,
            },
            "detection": {
                "listening": self.nflog is not None,
                "reports": self.nflog.stats.messages if self.nflog else 0,
                "reports_lost": self.nflog.stats.lost if self.nflog else 0,
                "denials": st.denials,
                "port_scans": st.port_scans,
                "syn_floods": st.syn_floods,
                "conntrack_limits": st.conntrack_limits,
                "audited_denials": st.sampled,
                "threats_sent": self.threats_sent,
                **self.detector.following(),
            },
        }
