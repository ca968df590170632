"""The generations service (layer L3): cold start, reload, anti-lockout, drift repair.

Owns: the current `Generation` (a validated policy, its ruleset and evaluator), swapped
only after the kernel accepted it; what the last reload did; the counters of reloads and
drift repairs; and the order of a policy change: load → compile → anti-lockout → kernel
(through the one writer) → tell every service (`listeners`) → swap → audit. A generation
is the whole policy, not only its kernel projection: a reload that changes only daemon-side
settings (reputation, detection, egress defaults) makes a new generation without a kernel
write. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.store import Store
from aitherfwd.audit_records import (
    DaemonStarted,
    DriftRepaired,
    ElementsRepaired,
    ReloadApplied,
    ReloadRejected,
    StoreRecovered,
)
from aitherfwd.clock import Clock
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.daemon import coldstart, elements
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.ports import Conntrack, Kernel, Systemd
from aitherfwd.daemon.state import Generation, ReloadOutcome, describe
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.errors import AitherError, ApplyError, PolicyError
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.nft import names as n
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import Policy, Protocol
from aitherfwd.policy.parse import ParseResult
from aitherfwd.policy.timezones import next_change
from aitherfwd.reconcile import delta, plan, transaction
from aitherfwd.stats import Stats

log = logging.getLogger(__name__)
TIMEZONE = "timezone"  # the trigger of a reload for a time zone's new UTC offset
ZONE_RETRY = 60.0  # seconds before a refused time-zone reload is tried again
Loader = Callable[[Path], ParseResult]
Listener = Callable[[Policy], None]


@dataclass
class GenerationStatus:
    generation: Generation | None
    last_reload: ReloadOutcome | None
    reloads: dict[str, int] = field(default_factory=dict)
    drift_repairs: int = 0
    start_seconds: float = 0.0


class Generations:
    def __init__(  # noqa: PLR0917 - the ports, wired in daemon/services.py
        self,
        policy_path: Path,
        load: Loader,
        clock: Clock,
        writer: KernelWriter,
        store: Store,
        audit: AuditLog,
        systemd: Systemd,
        conntrack: Conntrack,
        blocks: BlockService,
        egress: EgressRuntime,
        stats: Stats,
    ) -> None:
        self.policy_path, self._load_policy, self.clock = policy_path, load, clock
        self.writer, self.store, self.audit = writer, store, audit
        self.systemd, self.conntrack = systemd, conntrack
        self.blocks, self.egress, self.stats = blocks, egress, stats
        self.listeners: list[Listener] = []  # told of every policy that takes effect
        self.table_repaired: list[Callable[[], None]] = []  # told after a drift repair
        self.generation: Generation | None = None
        self.last_reload: ReloadOutcome | None = None
        self.reloads: dict[str, int] = {}
        self.drift_repairs = 0
        self.start_seconds = 0.0  # load + restore at the cold start
        self._next_reconcile = 0.0  # monotonic time before which elements are not re-listed
        self._reload_lock = asyncio.Lock()
        self.zone_change: float | None = None  # when a time zone of the policy next shifts

    def current(self) -> Generation:
        if self.generation is None:
            raise RuntimeError("the daemon has no generation before its cold start")
        return self.generation

    def status(self) -> GenerationStatus:
        return GenerationStatus(
            self.generation,
            self.last_reload,
            dict(sorted(self.reloads.items())),
            self.drift_repairs,
            self.start_seconds,
        )

    async def _load(self) -> tuple[Policy | None, list[dict[str, Any]], list[dict[str, Any]]]:
        # off the event loop: a slow disk or a large file never stalls the socket
        result = await asyncio.to_thread(self._load_policy, self.policy_path)
        errors = [d.as_dict() for d in result.diagnostics if d.severity is Severity.ERROR]
        warnings = [d.as_dict() for d in result.diagnostics if d.severity is Severity.WARNING]
        return result.policy, errors, warnings

    def _take_effect(self, policy: Policy) -> None:
        for listener in self.listeners:
            listener(policy)

    # --- cold start ----------------------------------------------------------------------

    async def cold_start(self) -> Generation:
        """Load, adopt or apply, restore blocks. Raises PolicyError (kernel untouched)."""
        policy, errors, _ = await self._load()
        if policy is None:
            lines = [describe(e) for e in errors]
            raise PolicyError(
                "invalid policy; the kernel keeps what it enforces now\n" + "\n".join(lines)
            )
        started = time.perf_counter()
        now = self.clock.now()
        self._take_effect(policy)
        self.egress.load(now)
        if self.store.recovered:
            self.audit.write(now, StoreRecovered(reason=self.store.recovered))
        ruleset = compile_policy(policy, now)
        adopted = await self.writer.call(
            lambda k: coldstart.adopt_or_apply(
                k, ruleset, self.clock, blocks=self.blocks, egress=self.egress, store=self.store
            )
        )
        in_place = await self.writer.call(lambda k: k.updates_timeouts())
        self.blocks.table.update_in_place = self.egress.grants.update_in_place = in_place
        self.start_seconds = round(time.perf_counter() - started, 4)
        log.info(
            "started: %d blocks restored in %.3f s (adopted=%s)",
            len(self.blocks.table),
            self.start_seconds,
            adopted,
        )
        self.generation = Generation(1, policy, ruleset, Evaluator(policy), self.policy_path, now)
        self.zone_change = next_change(policy, now)
        self.last_reload = ReloadOutcome(
            "adopted" if adopted else "applied", 1, at=now, trigger="start"
        )
        self.audit.write(
            now,
            DaemonStarted(
                generation=1,
                policy_sha256=policy.sha256,
                adopted=adopted,
                blocks=len(self.blocks.table),
            ),
        )
        return self.generation

    # --- reload --------------------------------------------------------------------------

    async def reload(self, *, force: bool = False, trigger: str = "api") -> ReloadOutcome:
        async with self._reload_lock:
            self.systemd.reloading()
            started = time.perf_counter()
            try:
                outcome = await self._reload(force, trigger)
                self.last_reload = outcome
            finally:
                self.systemd.ready(self.status_line())
            self.stats.reload(time.perf_counter() - started)
            self.reloads[outcome.result] = self.reloads.get(outcome.result, 0) + 1
            return outcome

    async def _reload(self, force: bool, trigger: str) -> ReloadOutcome:
        now = self.clock.now()
        current = self.current()
        policy, errors, warnings = await self._load()
        if policy is None:
            log.error(
                "reload rejected: invalid policy errors=%d path=%s first=%s",
                len(errors),
                self.policy_path,
                describe(errors[0]),
            )
            self.audit.write(now, ReloadRejected(trigger=trigger, errors=tuple(errors)))
            return ReloadOutcome("rejected", current.number, errors, warnings, now, trigger)
        if policy.sha256 == current.policy.sha256 and trigger != TIMEZONE:
            return ReloadOutcome("unchanged", current.number, [], warnings, now, trigger)
        ruleset = compile_policy(policy, now)
        same_kernel = ruleset.sha256 == current.ruleset.sha256
        evaluator = Evaluator(policy)
        if not force:
            cut = await self._lockout(policy, evaluator)
            if cut:
                msg = (
                    f"refused: the new policy would lock out live admin sessions from "
                    f"{', '.join(cut)}; fix the policy or force the reload"
                )
                err = {"code": "E-LOCKOUT", "message": msg}
                self.audit.write(now, ReloadRejected(trigger=trigger, errors=(err,)))
                return ReloadOutcome("rejected", current.number, [err], warnings, now, trigger)
        try:
            if not same_kernel:
                lost = await self.writer.call(
                    lambda k: self._apply_delta(k, current.ruleset, ruleset)
                )
                if lost:
                    await self._restore_dynamic()
        except ApplyError as exc:
            err = {"code": exc.code, "message": exc.message}
            self.audit.write(now, ReloadRejected(trigger=trigger, errors=(err,)))
            return ReloadOutcome("rejected", current.number, [err], warnings, now, trigger)
        self._take_effect(policy)
        number = current.number + 1
        self.generation = Generation(number, policy, ruleset, evaluator, self.policy_path, now)
        self.zone_change = next_change(policy, now)
        self.audit.write(
            now,
            ReloadApplied(
                trigger=trigger,
                generation=number,
                policy_sha256=policy.sha256,
                ruleset_sha256=ruleset.sha256,
                kernel_changed=not same_kernel,
            ),
        )
        log.info(
            "reload applied generation=%d trigger=%s kernel=%s", number, trigger, not same_kernel
        )
        return ReloadOutcome("applied", number, [], warnings, now, trigger)

    async def follow_time_zones(self) -> bool:
        """Once a time zone of the policy changed its UTC offset (DST), reload with the
        trigger `timezone`: the policy is compiled again for the kernel (which matches in
        UTC) even when its file did not change. Refused (the file is invalid now, or a
        lockout): the last generation stays and it is tried again a minute later."""
        if self.zone_change is None or self.clock.now() < self.zone_change:
            return False
        outcome = await self.reload(trigger=TIMEZONE)
        if outcome.result != "applied":
            self.zone_change = self.clock.now() + ZONE_RETRY
        return outcome.result == "applied"

    def _apply_delta(self, kernel: Kernel, previous: Ruleset, ruleset: Ruleset) -> bool:
        """Only what changed since the generation we applied; if the kernel drifted and
        refuses, fall back to the full, listing-based transaction. True when dynamic sets
        were lost and must be restored (`_restore_dynamic`, on the loop)."""
        try:
            kernel.run(delta(previous, ruleset))
        except ApplyError as exc:
            log.warning("delta refused, applying in full error=%s", exc.message)
            return self._apply(kernel, ruleset)
        return False

    def _apply(self, kernel: Kernel, ruleset: Ruleset) -> bool:
        """The ruleset in one transaction, in the writer thread. It reads only the kernel
        and the compiled ruleset — never the block or grant tables, which the event loop
        changes meanwhile (a restore from this thread once crashed the writer with
        "dictionary changed size during iteration" under a flood). Returns whether the
        table or a block set was lost: then the caller restores the elements."""
        before = kernel.observe()
        kernel.run(transaction(ruleset, before))
        return not before.exists or any(s.name not in before.sets for s in n.BLOCK_SETS)

    async def _restore_dynamic(self) -> None:
        await elements.restore_all(self.clock, self.writer, self.blocks, self.egress)

    async def _lockout(self, policy: Policy, evaluator: Evaluator) -> list[str]:
        ports = policy.settings.admin_ports
        try:
            peers = await asyncio.to_thread(self.conntrack.established_peers, ports)
        except (AitherError, OSError) as exc:
            log.warning("anti-lockout check skipped: conntrack unavailable error=%s", exc)
            return []
        now = self.clock.now()
        cut = []
        for peer, port in sorted(peers, key=str):
            v = evaluator.evaluate(Request(peer, Protocol.TCP, port), now, self.blocks.table)
            if v.verdict not in ("allow", "rate_limited"):
                cut.append(f"{peer} (port {port}: {v.verdict} by {v.rule or 'default'})")
        return cut

    # --- drift -----------------------------------------------------------------------------

    async def check_drift(self, *, full: bool = False) -> bool:
        """Cheap when nothing happened: compare the namespace's nftables generation with the
        one after our last write; list and compare the table only when it moved (or when
        `full`, the periodic backstop)."""
        gen = self.generation
        if gen is None:
            return False
        kernel_gen = self.writer.nft.generation()
        if not full and kernel_gen is not None and kernel_gen == self.writer.own_generation:
            return False
        observed = await self.writer.call(lambda k: k.observe(), writes=False)
        if observed.exists and not plan(gen.ruleset, observed).changed:
            if kernel_gen is not None and self.writer.own_generation is not None:
                self.writer.own_generation = kernel_gen  # someone else's table changed
            if full or self.clock.monotonic() < self._next_reconcile:
                return False
            return await self._repair_elements(gen.number)
        if await self.writer.call(lambda k: self._apply(k, gen.ruleset)):
            await self._restore_dynamic()
        for hook in self.table_repaired:  # sets filled by element writes only (geosets)
            hook()
        self.drift_repairs += 1
        log.warning("drift repaired: table inet aitherfwd differed from generation=%d", gen.number)
        self.audit.write(
            self.clock.now(), DriftRepaired(generation=gen.number, table_existed=observed.exists)
        )
        return True

    async def _repair_elements(self, number: int) -> bool:
        """Someone else changed nftables and our static part is intact: did they touch our
        block, sandbox or domain sets (`nft flush set`, a deleted element)? Listing costs
        ~5 µs per element, so this runs at most once per 20 listing-times (at least 3 s
        apart)."""
        started = self.clock.monotonic()
        restored = await elements.repair(self.clock, self.writer, self.blocks, self.egress)
        spent = self.clock.monotonic() - started
        self._next_reconcile = self.clock.monotonic() + max(3.0, 20 * spent)
        if not restored:
            return False
        self.drift_repairs += 1
        log.warning("drift repaired: %d elements were missing from the kernel's sets", restored)
        self.audit.write(
            self.clock.now(), ElementsRepaired(generation=number, elements_restored=restored)
        )
        return True

    # --- the one-line status -------------------------------------------------------------

    def status_line(self) -> str:
        gen = self.generation
        if gen is None:
            return "starting"
        blocks = len(self.blocks.table)
        line = f"generation {gen.number}, policy {gen.policy.sha256[:12]}, {blocks} blocks"
        if self.store.unpersisted is not None:  # running from memory: say it where admins look
            line += f"; STATE NOT PERSISTED ({self.store.unpersisted.split(':')[0]})"
        elif self.store.disk_full:
            line += "; STATE NOT PERSISTED: disk full"
        last = self.last_reload
        if last is not None and last.result == "rejected" and last.errors:
            # READY=1 after a rejected reload must not hide why (`systemctl status` shows it)
            line += f"; last reload REJECTED: {describe(last.errors[0])}"
        return line
