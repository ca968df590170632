"""The daemon's operations (layer L3): reload, block, unblock, evaluate, status, drift.

Owns: the current generation and the block table, and the order of every state change:
validate → store → kernel (through the one writer) → swap/bookkeeping → audit. The HTTP
routes, the CLI and the timers call these methods; nothing else changes state.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.adapters import conntrack, memory, nftgen
from aitherfwd.adapters import systemd as sd
from aitherfwd.adapters.audit import AuditLog, rfc3339
from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.adapters.notify import Notifier
from aitherfwd.adapters.store import Store
from aitherfwd.clock import Clock
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.control.schema import BlockSpec, EvaluateSpec, ThreatSpec
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.state import Generation, ReloadOutcome, describe
from aitherfwd.daemon.views import block_view
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.dynamic import reputation
from aitherfwd.dynamic.blocks import Block, BlockError, BlockTable, address_text
from aitherfwd.dynamic.reputation import Decision, Offender, offender_key
from aitherfwd.errors import AitherError, ApplyError, PolicyError, RequestError
from aitherfwd.evaluator import Evaluator, Request, TokenBuckets
from aitherfwd.nft import names as n
from aitherfwd.nft.builders import element_batches
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import IPAddress, IPNetwork, Policy, Protocol
from aitherfwd.reconcile import Observed, delta, plan, transaction
from aitherfwd.stats import Stats

log = logging.getLogger(__name__)
# Conntrack cuts queued at most: each costs ~12 ms of pyroute2 work, done one at a time in
# the background; beyond this, bans rely on the drop-before-established rule alone.
CONNTRACK_QUEUE = 256
RESTORE_BATCH = 50_000  # elements per cold-start transaction (see _adopt_or_apply)
CONNTRACK_CUT_PAUSE = 0.05
# Threat events remembered per offender until a block takes them into its history: the
# last few per address, for the addresses seen most recently (bounded memory).
RECENT_EVENTS = 10
RECENT_ADDRESSES = 10_000
Actor = dict[str, int]  # uid, gid, pid of an API caller (SO_PEERCRED)


@dataclass
class Counters:
    drift_repairs: int = 0
    reloads: dict[str, int] = field(default_factory=dict)


class Daemon:
    def __init__(  # noqa: PLR0917 - the adapters, wired in one place (daemon.main)
        self,
        policy_path: Path,
        clock: Clock,
        writer: KernelWriter,
        store: Store,
        audit: AuditLog,
        notifier: Notifier | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.clock = clock
        self.writer = writer
        self.store = store
        self.audit = audit
        self.notifier = notifier or Notifier()
        self.recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self.blocks = BlockTable()
        self.buckets = TokenBuckets()
        self.generation: Generation | None = None
        self.last_reload: ReloadOutcome | None = None
        self.counters = Counters()
        self.stats = Stats()  # for metrics only (daemon/telemetry.py)
        self.started_at = clock.now()
        self.start_seconds = 0.0  # load + restore at the cold start
        self._next_reconcile = 0.0  # monotonic time before which elements are not re-listed
        self._reload_lock = asyncio.Lock()
        self.offenders: dict[str, Offender] = {}
        self.threat_counts: dict[str, int] = {}
        self._cuts: asyncio.Queue[IPAddress] = asyncio.Queue(CONNTRACK_QUEUE)
        self._cutter: asyncio.Task[None] | None = None
        self.egress = EgressRuntime(clock, writer, store, audit)  # grants, resolved domains
        self.egress.on_change = self.stats.sandbox  # live grants for the metrics
        self.detection: Any = None  # daemon.detection.Detection, wired by daemon.main

    # --- generations ---------------------------------------------------------------------

    def current(self) -> Generation:
        if self.generation is None:
            raise RuntimeError("the daemon has no generation before its cold start")
        return self.generation

    def _load(self) -> tuple[Policy | None, list[dict[str, Any]], list[dict[str, Any]]]:
        result = load_policy(self.policy_path)
        errors = [d.as_dict() for d in result.diagnostics if d.severity is Severity.ERROR]
        warnings = [d.as_dict() for d in result.diagnostics if d.severity is Severity.WARNING]
        return result.policy, errors, warnings

    def _protect(self, policy: Policy) -> None:
        mgmt = [c for z in policy.zones if z.name == "management" for c in z.cidrs]
        never = policy.reputation.never_block
        self.blocks.protected = self.blocks.protected[:2] + tuple(mgmt) + never

    async def cold_start(self) -> Generation:
        """Load, adopt or apply, restore blocks. Raises PolicyError (kernel untouched)."""
        policy, errors, _ = self._load()
        if policy is None:
            lines = [describe(e) for e in errors]
            raise PolicyError(
                "invalid policy; the kernel keeps what it enforces now\n" + "\n".join(lines)
            )
        started = time.perf_counter()
        now = self.clock.now()
        self.blocks.load(self.store.load_blocks(now))
        self.offenders = self.store.load_offenders()
        self._protect(policy)
        self.notifier.configure(policy.notify)
        self.egress.configure(policy)
        self.egress.load(now)
        if self.store.recovered:
            self.audit.write(now, "store_recovered", reason=self.store.recovered)
        ruleset = compile_policy(policy)
        adopted = await self.writer.call(lambda nft: self._adopt_or_apply(nft, ruleset))
        self.start_seconds = round(time.perf_counter() - started, 4)
        log.info(
            "started: %d blocks restored in %.3f s (adopted=%s)",
            len(self.blocks),
            self.start_seconds,
            adopted,
        )
        self.generation = Generation(1, policy, ruleset, Evaluator(policy), self.policy_path, now)
        self.last_reload = ReloadOutcome(
            "adopted" if adopted else "applied", 1, at=now, trigger="start"
        )
        self.audit.write(
            now,
            "daemon_started",
            generation=1,
            policy_sha256=policy.sha256,
            adopted=adopted,
            blocks=len(self.blocks),
        )
        return self.generation

    def _adopt_or_apply(self, nft: Nft, ruleset: Ruleset) -> bool:
        """Adopt a table that already enforces this ruleset (no gap), else apply it — in
        the same transaction as the stored blocks with their remaining timeouts (`add` is a
        no-op for an element the kernel still has), RESTORE_BATCH elements per transaction:
        beyond that, the first batch comes with the table and the rest follow at once
        (one 1,000,000-element call would leave the host without a table twice as long).
        Kernel blocks the store does not know (its database was lost, or another tool
        added them) are listed and adopted only when the store cannot be complete: listing
        100,000 elements costs half a second."""
        before = nft.observe()
        adopted = before.exists and not plan(ruleset, before).changed
        now = self.clock.now()
        restore = self.blocks.restore_commands(now)
        restore += self.egress.restore_commands(now, domains=False)
        static = [] if adopted else transaction(ruleset, before)
        batches = element_batches(restore, RESTORE_BATCH) or [[]]
        del restore
        try:
            if static or batches[0]:
                nft.run(static + batches[0])
            static = []  # in force now
            for batch in batches[1:]:
                nft.run(batch)
        except ApplyError as exc:  # e.g. a kernel prefix overlapping a stored one
            log.warning("restore refused, reconciling element by element error=%s", exc.message)
            if static:
                nft.run(static)
            self._reconcile_blocks(nft, now)
            self.egress.repair(nft, now)  # the grants, which were in the refused batch too
            return adopted
        if before.exists and (self.store.recovered is not None or not len(self.blocks)):
            self._reconcile_blocks(nft, now)
        return adopted

    def _reconcile_blocks(self, nft: Nft, now: float) -> int:
        """List the kernel's block sets: adopt what the store does not know, add what the
        kernel lacks (but not blocks about to expire: the kernel may just have expired
        them). Returns how many were added."""
        in_kernel: set[str] = set()
        found: list[Block] = []  # in the kernel, unknown to the store
        for s in n.BLOCK_SETS:
            for elem in nft.set_elements(s.name):
                in_kernel.add(self._adopt_element(elem, now, found))
        self.store.restore_history(found)
        missing = [
            blk
            for blk in self.blocks.active(now)
            if blk.key not in in_kernel and (blk.expires_at is None or blk.expires_at > now + 2)
        ]
        if missing:
            restore = BlockTable()
            restore.load(missing)
            nft.run(restore.restore_commands(now))
        return len(missing)

    def _adopt_element(self, elem: Any, now: float, found: list[Block]) -> str:
        body = elem["elem"] if isinstance(elem, dict) and "elem" in elem else {"val": elem}
        val = body["val"]
        text = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else val
        net = ipaddress.ip_network(text)
        key = address_text(net)
        if self.blocks.get(key, now) is None:
            expires = body.get("expires")
            blk = Block(
                key, now + expires if expires else None, "found in the kernel", "kernel", now
            )
            self.blocks.load([blk])
            found.append(blk)
        return key

    async def reload(self, *, force: bool = False, trigger: str = "api") -> ReloadOutcome:
        async with self._reload_lock:
            sd.reloading()
            started = time.perf_counter()
            try:
                outcome = await self._reload(force, trigger)
                self.last_reload = outcome
            finally:
                sd.ready(self.status_line())
            self.stats.reload(time.perf_counter() - started)
            self.counters.reloads[outcome.result] = self.counters.reloads.get(outcome.result, 0) + 1
            return outcome

    async def _reload(self, force: bool, trigger: str) -> ReloadOutcome:
        now = self.clock.now()
        current = self.current()
        policy, errors, warnings = self._load()
        if policy is None:
            log.error(
                "reload rejected: invalid policy errors=%d path=%s first=%s",
                len(errors),
                self.policy_path,
                describe(errors[0]),
            )
            self.audit.write(now, "reload_rejected", trigger=trigger, errors=errors)
            sd.status(f"generation {current.number}; last reload REJECTED: {errors[0]['message']}")
            return ReloadOutcome("rejected", current.number, errors, warnings, now, trigger)
        ruleset = compile_policy(policy)
        same_kernel = ruleset.sha256 == current.ruleset.sha256
        # allowlisted names, DNS bounds and sandbox limits live outside the ruleset
        outbound = (policy.egress, policy.sandbox) != (
            current.policy.egress,
            current.policy.sandbox,
        )
        if same_kernel and not outbound:
            return ReloadOutcome("unchanged", current.number, [], warnings, now, trigger)
        evaluator = Evaluator(policy)
        if not force:
            cut = await self._lockout(policy, evaluator)
            if cut:
                msg = (
                    f"refused: the new policy would lock out live admin sessions from "
                    f"{', '.join(cut)}; fix the policy or force the reload"
                )
                err = {"code": "E-LOCKOUT", "message": msg}
                self.audit.write(now, "reload_rejected", trigger=trigger, errors=[err])
                return ReloadOutcome("rejected", current.number, [err], warnings, now, trigger)
        try:
            if not same_kernel:
                await self.writer.call(lambda nft: self._apply_delta(nft, current.ruleset, ruleset))
        except ApplyError as exc:
            err = {"code": exc.code, "message": exc.message}
            self.audit.write(now, "reload_rejected", trigger=trigger, errors=[err])
            return ReloadOutcome("rejected", current.number, [err], warnings, now, trigger)
        self._protect(policy)
        self.notifier.configure(policy.notify)
        self.egress.configure(policy)  # the refresher syncs the domain sets on its next turn
        self.generation = Generation(
            current.number + 1, policy, ruleset, evaluator, self.policy_path, now
        )
        self.audit.write(
            now,
            "reload_applied",
            trigger=trigger,
            generation=current.number + 1,
            policy_sha256=policy.sha256,
            ruleset_sha256=ruleset.sha256,
        )
        log.info("reload applied generation=%d trigger=%s", current.number + 1, trigger)
        return ReloadOutcome("applied", current.number + 1, [], warnings, now, trigger)

    def _apply_delta(self, nft: Nft, previous: Ruleset, ruleset: Ruleset) -> None:
        """Only what changed since the generation we applied; if the kernel drifted and
        refuses, fall back to the full, listing-based transaction."""
        try:
            nft.run(delta(previous, ruleset))
        except ApplyError as exc:
            log.warning("delta refused, applying in full error=%s", exc.message)
            self._apply(nft, ruleset)

    def _apply(self, nft: Nft, ruleset: Ruleset) -> Observed:
        """One transaction; when the table or a block set was lost, the same transaction
        restores every live block with its remaining timeout."""
        before = nft.observe()
        lost = not before.exists or any(s.name not in before.sets for s in n.BLOCK_SETS)
        now = self.clock.now()
        extra = self.blocks.restore_commands(now) if lost else []
        extra += self.egress.restore_commands(now, domains=True) if lost else []
        nft.run(transaction(ruleset, before) + extra)
        return before

    async def _lockout(self, policy: Policy, evaluator: Evaluator) -> list[str]:
        ports = policy.settings.admin_ports
        try:
            peers = await asyncio.to_thread(conntrack.established_peers, ports)
        except (AitherError, OSError) as exc:
            log.warning("anti-lockout check skipped: conntrack unavailable error=%s", exc)
            return []
        now = self.clock.now()
        cut = []
        for peer, port in sorted(peers, key=str):
            v = evaluator.evaluate(Request(peer, Protocol.TCP, port), now, self.blocks)
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
        self._expire()
        try:
            kernel_gen: int | None = nftgen.current()
        except OSError:
            kernel_gen = None
        if not full and kernel_gen is not None and kernel_gen == self.writer.own_generation:
            return False
        observed = await self.writer.call(lambda nft: nft.observe(), writes=False)
        if observed.exists and not plan(gen.ruleset, observed).changed:
            if kernel_gen is not None and self.writer.own_generation is not None:
                self.writer.own_generation = kernel_gen  # someone else's table changed
            if full or time.monotonic() < self._next_reconcile:
                return False
            return await self._repair_elements(gen.number)
        await self.writer.call(lambda nft: self._apply(nft, gen.ruleset))
        self.counters.drift_repairs += 1
        log.warning("drift repaired: table inet aitherfwd differed from generation=%d", gen.number)
        self.audit.write(
            self.clock.now(), "drift_repaired", generation=gen.number, table_existed=observed.exists
        )
        return True

    async def _repair_elements(self, number: int) -> bool:
        """Someone else changed nftables and our static part is intact: did they touch our
        block, sandbox or domain sets (`nft flush set`, a deleted element)? Listing costs
        ~5 µs per element, so this runs at most once per 20 listing-times (at least 3 s
        apart)."""
        started = time.monotonic()

        def repair(nft: Nft) -> int:
            now = self.clock.now()
            return self._reconcile_blocks(nft, now) + self.egress.repair(nft, now)

        restored = await self.writer.call(repair)
        self._next_reconcile = time.monotonic() + max(3.0, 20 * (time.monotonic() - started))
        if not restored:
            return False
        self.counters.drift_repairs += 1
        log.warning("drift repaired: %d elements were missing from the kernel's sets", restored)
        self.audit.write(
            self.clock.now(), "drift_repaired", generation=number, elements_restored=restored
        )
        return True

    def _expire(self) -> None:
        now = self.clock.now()
        expired = self.blocks.prune(now)
        if expired:
            self.stats.expired(len(expired))
            self.store.end_blocks((b.key for b in expired), now, "expired")
            for blk in expired:
                self.audit.write(
                    now, "block_expired", source_ip=blk.key, reason=blk.reason, source=blk.source
                )
                if blk.source == "reputation":
                    self.notifier.send("expire", self._event("FIREWALL_IP_UNBLOCKED", blk, now))

    # --- blocks ----------------------------------------------------------------------------

    async def block(
        self,
        specs: Sequence[BlockSpec],
        source: str = "manual",
        actor: Actor | None = None,
        events: dict[str, list[dict[str, Any]]] | None = None,
    ) -> list[Block]:
        """Store first (a failing disk is reported, not fatal), then one kernel transaction."""
        now = self.clock.now()
        seen: set[str] = set()
        blocks = []
        expiry: dict[int, float] = {}  # one float per distinct TTL, shared by its blocks
        for spec in specs:
            if spec.key in seen:
                continue
            self.blocks.check(spec.key, now)  # BlockError: E-PROTECTED, E-BLOCK-OVERLAP
            expires = expiry.setdefault(spec.ttl, now + spec.ttl) if spec.ttl else None
            seen.add(spec.key)
            blocks.append(Block(spec.key, expires, spec.reason, source, now))
        previous = {blk.key: self.blocks.get(blk.key, now) for blk in blocks}
        replaced = [k for k, p in previous.items() if p is not None]
        self.store.save_blocks(blocks, replaced=replaced, events=events)
        commands = self.blocks.put(blocks, now)
        try:
            await self.writer.elements(commands)
        except ApplyError:
            self._revert(blocks, previous)
            raise
        self.stats.blocked(source, len(blocks))
        if len(blocks) >= memory.LARGE_BATCH:
            del commands
            memory.trim()  # the request's JSON and the batch are garbage now
        self.audit.write(
            now,
            "blocked",
            source_ip=blocks[0].key if blocks else None,
            count=len(blocks),
            source=source,
            addresses=[b.key for b in blocks[:100]],
            ttl=specs[0].ttl if specs else None,
            reason=specs[0].reason if specs else None,
            actor=actor,
        )
        for blk in blocks:
            if not blk.single or self._cuts.full():
                continue
            self._cuts.put_nowait(blk.network.network_address)
            if self._cutter is None or self._cutter.done():
                self._cutter = asyncio.get_running_loop().create_task(self._cut())
        return blocks

    def _revert(self, blocks: list[Block], previous: dict[str, Block | None]) -> None:
        now = self.clock.now()
        for blk in blocks:
            self.blocks.remove(blk.key, now)
        self.blocks.load(p for p in previous.values() if p is not None)
        self.store.end_blocks((k for k, p in previous.items() if p is None), now, "kernel refused")
        self.store.save_blocks(
            [p for p in previous.values() if p is not None],
            replaced=[k for k, p in previous.items() if p is not None],
        )

    async def _cut(self) -> None:
        """Delete the blocked sources' conntrack entries, one at a time, in the background
        (their packets are already dropped before the established rule; this frees the
        tracking state that would otherwise linger for the established timeout)."""
        while not self._cuts.empty():
            address = self._cuts.get_nowait()
            try:
                await asyncio.to_thread(conntrack.delete_source, address)
            except (AitherError, OSError) as exc:
                log.debug("conntrack flush failed address=%s error=%s", address, exc)
            # paced: pyroute2 spends ~12 ms of CPU per dump, which must not starve requests
            await asyncio.sleep(CONNTRACK_CUT_PAUSE)

    async def threats(
        self, events: Sequence[ThreatSpec], actor: Actor | None = None
    ) -> dict[str, Any]:
        """Feed threat events to the reputation ladder; blocks it decides on go out through
        the same path as manual ones (store, then one kernel transaction), with one audit
        line per escalation."""
        now = self.clock.now()
        settings = self.current().policy.reputation
        decisions: dict[str, tuple[IPNetwork, Decision, ThreatSpec]] = {}
        changed: dict[str, Offender] = {}
        for ev in events:
            self.threat_counts[ev.type] = self.threat_counts.get(ev.type, 0) + 1
            self.stats.threat(ev.type)
            net = offender_key(ev.source, settings)
            key = address_text(net)
            off, decision = reputation.step(self.offenders.get(key), ev.severity, now, settings)
            self.offenders[key] = changed[key] = off
            self._remember(key, ev, now)
            if decision is not None:
                decisions[key] = (net, decision, ev)
        self.store.save_offenders(changed)
        specs, refused, led_to = [], [], {}
        for key, (net, decision, ev) in sorted(decisions.items()):
            try:
                self.blocks.check(net, now)
            except BlockError:
                refused.append(key)
                self.offenders[key] = reputation.lifted(self.offenders[key])
                continue
            reason = f"reputation: {decision.kind} block #{decision.block_number} after {ev.type}"
            specs.append(BlockSpec(key, decision.ttl, reason))
            led_to[key] = list(self.recent.pop(key, ()))
            self.stats.escalated(decision.kind)
            self.audit.write(
                now,
                f"escalation_{decision.kind}",
                source_ip=key,
                threat=ev.type,
                severity=str(ev.severity),
                block_number=decision.block_number,
                ttl=decision.ttl,
                reason=reason,
                actor=actor,
            )
        blocked = (
            await self.block(specs, source="reputation", actor=actor, events=led_to)
            if specs
            else []
        )
        for blk in blocked:
            kind = "permanent" if blk.expires_at is None else "block"
            self.notifier.send(kind, self._event("FIREWALL_IP_BLOCKED", blk, now, led_to))
        return {
            "accepted": len(events),
            "blocked": [block_view(b) for b in blocked],
            "protected": refused,
        }

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
                "detail": ev.detail,
            }
        )

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

    async def unblock(self, network: IPNetwork, actor: Actor | None = None) -> Block:
        now = self.clock.now()
        key = address_text(network)
        removed = self.blocks.remove(key, now)
        if removed is None:
            raise RequestError(f"{key} is not blocked", code="E-NOT-BLOCKED")
        blk, commands = removed
        try:
            await self.writer.elements(commands)
        except ApplyError:
            self.blocks.load([blk])
            raise
        self.store.end_blocks([key], now, "unblocked")
        self.stats.unblocked()
        if key in self.offenders:
            self.offenders[key] = reputation.lifted(self.offenders[key])
            self.store.save_offenders({key: self.offenders[key]})
        self.audit.write(
            now, "unblocked", source_ip=key, reason=blk.reason, source=blk.source, actor=actor
        )
        if blk.source == "reputation":
            self.notifier.send("unblock", self._event("FIREWALL_IP_UNBLOCKED", blk, now))
        return blk

    # --- queries ---------------------------------------------------------------------------

    def evaluate(self, spec: EvaluateSpec) -> dict[str, Any]:
        gen = self.current()
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
            self.blocks,
            self.buckets,
            self.egress,
        )
        latency = (time.perf_counter() - started) * 1e6
        self.stats.evaluated(latency / 1e6)
        return {
            "verdict": verdict.verdict,
            **({"action": verdict.verdict} if spec.direction == "outbound" else {}),
            "rule": verdict.rule,
            "zone": verdict.zone,
            "reason": verdict.reason,
            "latency_us": round(latency, 1),
        }

    def status_line(self) -> str:
        gen = self.generation
        if gen is None:
            return "starting"
        blocks = len(self.blocks)
        line = f"generation {gen.number}, policy {gen.policy.sha256[:12]}, {blocks} blocks"
        if self.store.disk_full:
            line += "; STATE NOT PERSISTED: disk full"
        last = self.last_reload
        if last is not None and last.result == "rejected" and last.errors:
            # READY=1 after a rejected reload must not hide why (`systemctl status` shows it)
            line += f"; last reload REJECTED: {describe(last.errors[0])}"
        return line
