"""The daemon's outbound state (layer L3): sandbox grants, and the refresher loop.

Owns: the live `GrantTable` and the order of every grant change — validate → store →
kernel (one transaction through the serialized writer) → bookkeeping → audit; grants for
host names following their names; the repair of the grant and domain sets after drift; the
refresher loop (DNS rounds of daemon/domains.py, grant expiry). Answers the evaluator's
questions (`resolved`, `granted`) for outbound verdicts. Restoring and repairing the grant
and domain sets in the kernel is `egress_kernel.EgressKernelView`, its base.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aitherfwd.adapters.audit import rfc3339
from aitherfwd.adapters.dns import ResolveError
from aitherfwd.adapters.store import Store
from aitherfwd.audit_records import (
    SandboxExpired,
    SandboxFollowed,
    SandboxGranted,
    SandboxRefused,
    SandboxRevoked,
)
from aitherfwd.clock import Clock
from aitherfwd.control.sandbox import GrantSpec
from aitherfwd.daemon.domains import DomainSync
from aitherfwd.daemon.egress_kernel import EgressKernelView
from aitherfwd.daemon.ports import AuditSink
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.egress import sandbox
from aitherfwd.egress.grants import GrantTable
from aitherfwd.egress.sandbox import Grant, GrantError, check_ports, key_of, refusal
from aitherfwd.errors import ApplyError, RequestError
from aitherfwd.policy.model import IPAddress, IPNetwork, Policy, PortRange
from aitherfwd.roles import Authorizer

log = logging.getLogger(__name__)
Actor = dict[str, Any]
FIRST_ROUND_TIMEOUT = 10.0  # seconds the cold start waits for the first resolution round
MAX_SLEEP = 5.0  # the refresher wakes at least this often (grant expiry, stale addresses)


@dataclass
class Caller:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class EgressRuntime(EgressKernelView):
    """The grants, their order of changes and the refresher (the kernel's view of the
    grant and domain sets: `EgressKernelView`)."""

    def __init__(self, clock: Clock, writer: KernelWriter, store: Store, audit: AuditSink) -> None:
        self.clock, self.writer, self.store, self.audit = clock, writer, store, audit
        self.grants = GrantTable()
        self.dns = DomainSync(clock, writer, audit)  # allowlisted names, kept fresh
        self.policy: Policy | None = None
        self.authorizer = Authorizer({})
        self.granted_total = 0
        self.refused_total = 0
        self._hosts_due = 0.0  # when host-name grants are next asked again
        self._wake = asyncio.Event()
        # called with (grants_v4, grants_v6, granted_total) after every change of the grants
        # (metrics: wire `daemon.stats.sandbox` here)
        self.on_change: Callable[[int, int, int], None] = lambda v4, v6, total: None

    # --- the evaluator's view ------------------------------------------------------------

    def resolved(self, base: str, address: IPAddress) -> bool:
        return self.dns.domains.holds(base, address)

    def granted(
        self, address: IPAddress, port: int | None, allowed: tuple[PortRange, ...], now: float
    ) -> str | None:
        g = self.grants.lookup(address, port, allowed, now)
        return g.scope if g is not None else None

    # --- policy and start ----------------------------------------------------------------

    def configure(self, policy: Policy) -> None:
        """A policy took effect: the names to keep fresh, the sets that exist now."""
        self.policy = policy
        eg = policy.egress
        self.dns.configure(policy)
        if eg is None:  # the port sets went with the output chain: so did those grants
            now = self.clock.now()
            gone = [g for g in self.grants.active(now) if g.ports]
            for g in gone:
                self.grants.remove(g.key, now)
            self.store.end_grants(g.key for g in gone)
        self._wake.set()

    def load(self, now: float) -> None:
        self.grants.load(self.store.load_grants(now))
        self._changed(now)

    # --- the refresher ---------------------------------------------------------------------

    async def run(self) -> None:
        """The refresher: wake when a name is due (or every MAX_SLEEP), refresh, expire."""
        while True:
            now = self.clock.now()
            nxt = self.dns.domains.next_due()
            delay = MAX_SLEEP if nxt is None else min(MAX_SLEEP, max(0.05, nxt - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            try:
                await self.dns.refresh()
                await self.follow_granted_hosts()
            except ApplyError as exc:
                log.error("domain set update refused code=%s error=%s", exc.code, exc.message)
            self._expire_grants()

    async def follow_granted_hosts(self) -> int:
        """A grant given for a host name follows the name while it lasts: every
        `dns.min_refresh` seconds the name is asked again and addresses it has gained are
        granted too, with the same scope, ports and end (the ones it lost stay until then:
        open connections and caches may still use them). Returns how many were added."""
        policy, now = self.policy, self.clock.now()
        resolver = self.dns.resolver
        if policy is None or policy.egress is None or resolver is None:
            return 0
        if now < self._hosts_due:
            return 0
        self._hosts_due = now + policy.egress.dns.min_refresh
        by_host: dict[str, list[Grant]] = {}
        for g in self.grants.active(now):
            if g.host:
                by_host.setdefault(g.host, []).append(g)
        added: list[Grant] = []
        for host, grants in sorted(by_host.items()):
            try:
                answer = await resolver.resolve(host)
            except ResolveError:
                continue  # keep what was granted; try again next time
            have = {g.key for g in grants}
            first = max(grants, key=lambda g: g.expires_at)
            for addr, _ in answer:
                net = ipaddress.ip_network(addr)
                key = key_of(net)
                if key in have or refusal(net, policy.egress) is not None:
                    continue  # known_bad still wins over a name that moved onto it
                if self.grants.get(key, now) is not None:
                    continue  # granted on its own: leave that grant as it is
                try:  # inside a prefix granted on the same port: the kernel would refuse
                    self.grants.check_overlap(net, now, first.ports)
                except GrantError:
                    continue
                have.add(key)
                added.append(
                    Grant(key, first.expires_at, first.scope, first.ports, now, host, first.uid)
                )
        if not added:
            return 0
        await self._commit(added, now)
        self._changed(now)
        for g in added:
            self.audit.write(now, SandboxFollowed(destination=g.key, host=g.host, scope=g.scope))
        return len(added)

    def _expire_grants(self) -> None:
        now = self.clock.now()
        gone = self.grants.take_lapsed() + self.grants.prune(now)
        if gone:
            self.store.end_grants(g.key for g in gone)
            for g in gone:
                self.audit.write(now, SandboxExpired(destination=g.key, scope=g.scope))
            self._changed(now)

    def _changed(self, now: float) -> None:
        counts = self.grants.counts(now)
        self.on_change(counts["grants_v4"], counts["grants_v6"], self.granted_total)

    # --- sandbox grants ------------------------------------------------------------------

    def _max_ttl(self, caller: Caller) -> tuple[int, bool]:
        """The longest grant this caller may have, and whether longer asks are capped
        (admin: capped at the policy's max_ttl) or refused (the sandbox role's limit)."""
        policy_max = self.policy.sandbox.max_ttl if self.policy else 0
        roles = self.authorizer.roles_of(caller.uid, caller.gid, caller.groups)
        if "admin" in roles:
            return policy_max, True
        member = self.authorizer.roles.get("sandbox")
        role_max = member.max_ttl if member is not None and member.max_ttl else policy_max
        return min(role_max, policy_max), False

    async def grant(self, spec: GrantSpec, caller: Caller, actor: Actor) -> dict[str, Any]:
        now = self.clock.now()
        policy = self.policy
        if policy is None or policy.egress is None:
            raise RequestError(
                "the policy has no egress: section; outbound is not filtered", code="E-NO-EGRESS"
            )
        targets = (
            [spec.network]
            if spec.network is not None
            else await self.dns.addresses(spec.host or "")
        )
        ttl = spec.ttl or policy.sandbox.default_ttl
        limit, admin = self._max_ttl(caller)
        try:
            self._vet(
                spec, targets, policy=policy, ttl=ttl, limit=None if admin else limit, now=now
            )
        except GrantError as exc:
            self.refused_total += 1
            self.audit.write(
                now,
                SandboxRefused(
                    destination=spec.host or str(spec.network),
                    scope=spec.scope,
                    reason=exc.message,
                    actor=actor,
                ),
            )
            raise
        given = min(ttl, limit)
        grants = [
            Grant(key_of(net), now + given, spec.scope, spec.ports, now, spec.host, caller.uid)
            for net in targets
        ]
        await self._commit(grants, now)
        self.granted_total += len(grants)
        self._changed(now)
        self.audit.write(
            now,
            SandboxGranted(
                destination=spec.host or grants[0].key,
                addresses=tuple(g.key for g in grants),
                scope=spec.scope,
                ttl=given,
                ports=tuple(spec.ports),
                capped=given < ttl,
                actor=actor,
            ),
        )
        return {"granted": [self.view(g, now) for g in grants], "ttl": given, "capped": given < ttl}

    def _vet(
        self,
        spec: GrantSpec,
        targets: list[IPNetwork],
        *,
        policy: Policy,
        ttl: int,
        limit: int | None,
        now: float,
    ) -> None:
        """Raise GrantError when the grant must not be made (`limit` None: an admin caller,
        whose ttl is capped, not refused, and who may grant prefixes of any length)."""
        if limit is not None and ttl > limit:
            raise GrantError(
                f"ttl {ttl}s is above the {limit}s your role may grant; ask for less",
                code="E-TTL-TOO-LONG",
            )
        sb = policy.sandbox
        check_ports(spec.ports, sb)
        for net in targets:
            if limit is not None:  # not an admin
                sandbox.check_width(net, sb)
            why = refusal(net, policy.egress)
            if why is not None:
                raise GrantError(why, code="E-GRANT-REFUSED")
            self.grants.check_overlap(net, now, spec.ports)
        new = sum(1 for net in targets if self.grants.get(key_of(net), now) is None)
        sandbox.check_caps(
            len(self.grants) + new, self.grants.scope_count(spec.scope) + new, spec.scope, sb
        )

    async def _commit(self, grants: list[Grant], now: float) -> None:
        """Store, then one kernel transaction; a refusal puts everything back."""
        previous = {g.key: self.grants.get(g.key, now) for g in grants}
        self.store.save_grants(grants)
        cmds = self.grants.put(grants, now)
        try:
            await self.writer.elements(cmds)
        except ApplyError:
            for g in grants:
                self.grants.remove(g.key, now)
            kept = [p for p in previous.values() if p is not None]
            self.grants.load(kept)
            self.store.end_grants(k for k, p in previous.items() if p is None)
            self.store.save_grants(kept)
            raise

    async def revoke(self, destination: str, actor: Actor) -> list[Grant]:
        now = self.clock.now()
        keys = (
            [destination]
            if self.grants.get(destination, now)
            else [g.key for g in self.grants.active(now) if g.host == destination]
        )
        if not keys:
            raise RequestError(f"{destination} has no live sandbox grant", code="E-NOT-GRANTED")
        removed: list[Grant] = []
        cmds: list[Any] = []
        for key in keys:
            got = self.grants.remove(key, now)
            if got is not None:
                removed.append(got[0])
                cmds += got[1]
        try:
            await self.writer.elements(cmds)
        except ApplyError:
            self.grants.load(removed)
            raise
        self.store.end_grants(g.key for g in removed)
        self._changed(now)
        self.audit.write(
            now,
            SandboxRevoked(
                destination=destination, addresses=tuple(g.key for g in removed), actor=actor
            ),
        )
        return removed

    def view(self, g: Grant, now: float) -> dict[str, Any]:
        return {
            "destination": g.key,
            "host": g.host,
            "scope": g.scope,
            "ports": list(g.ports),
            "expires_at": rfc3339(g.expires_at),
            "remaining_seconds": g.remaining(now),
            "created_at": rfc3339(g.created_at),
            "set": g.values()[0][0],
        }

    def status(self, now: float) -> dict[str, Any]:
        counts = self.grants.counts(now)
        return {
            "sandbox": {
                **counts,
                "granted_total": self.granted_total,
                "refused_total": self.refused_total,
            },
            "egress_dns": self.dns.status(),
        }
