"""Allowlisted host names kept fresh in the kernel's domain sets (layer L3).

Owns: the `DomainTable` (names, their addresses and TTLs), which addresses the kernel's
domain sets hold (`installed`), the resolver the policy names, DNS rounds applied as element
deltas in one transaction each (never a reload), and the `egress_dns` status section.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from aitherfwd.adapters.dns import ResolveError, Resolver
from aitherfwd.audit_records import EgressDnsChanged, EgressDnsFailed
from aitherfwd.clock import Clock
from aitherfwd.daemon.ports import AuditSink, Kernel
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.egress import names as en
from aitherfwd.egress.dns import Change, DomainTable, element_delta
from aitherfwd.errors import RequestError
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import IPNetwork, Policy

log = logging.getLogger(__name__)


class DomainSync:
    def __init__(self, clock: Clock, writer: KernelWriter, audit: AuditSink) -> None:
        self.clock, self.writer, self.audit = clock, writer, audit
        self.domains = DomainTable()
        self.installed: dict[str, frozenset[str]] = {}
        self.resolver: Resolver | None = None

    def configure(self, policy: Policy) -> None:
        """A policy took effect: the names to keep fresh, the sets that exist now."""
        eg = policy.egress
        hosts = eg.hosts() if eg is not None else {}
        bounds = eg.dns if eg is not None else self.domains.bounds
        self.domains.configure(hosts, bounds)
        sets = {
            en.domain_set(base, f) for bases in hosts.values() for base in bases for f in (4, 6)
        }
        self.installed = {k: v for k, v in self.installed.items() if k in sets}
        servers = [str(a) for a in eg.resolvers] if eg is not None else []
        self.resolver = Resolver(servers) if servers else None

    def restore_commands(self) -> list[Any]:
        """Element adds for every installed address (after a table loss)."""
        return [b.add(b.element(s, sorted(v))) for s, v in sorted(self.installed.items()) if v]

    async def refresh(self, *, first: bool = False) -> list[Change]:
        """One round: resolve every due name, apply the changes as one element delta.
        The first round after start adopts what the kernel's domain sets hold (addresses
        of a previous run), so a restart without DNS keeps enforcing them."""
        if first:
            await self.adopt()
        now = self.clock.now()
        due = self.domains.due(now)
        changes: list[Change] = []
        started = time.perf_counter()
        if due and self.resolver is not None:
            answers = await self.resolver.resolve_many(due)
            now = self.clock.now()
            for name, answer in sorted(answers.items()):
                if name not in self.domains.names:
                    continue  # a reload dropped it meanwhile
                if isinstance(answer, ResolveError):
                    self.domains.failed(name, answer.message, now)
                    log.warning(
                        "resolution failed; keeping its addresses name=%s error=%s",
                        name,
                        answer.message,
                    )
                    self.audit.write(now, EgressDnsFailed(host=name, reason=answer.message))
                else:
                    changes.append(self.domains.answered(name, answer, now))
        changes += self.domains.expire(now)
        await self.sync()
        self.domains.stats.rounds += 1
        self.domains.stats.last_round_seconds = round(time.perf_counter() - started, 4)
        for ch in changes:
            if ch.added or ch.removed:
                self.domains.stats.added += len(ch.added)
                self.domains.stats.removed += len(ch.removed)
                self.audit.write(
                    now,
                    EgressDnsChanged(
                        host=ch.name, added=tuple(ch.added), removed=tuple(ch.removed)
                    ),
                )
        return changes

    async def adopt(self) -> None:
        """At start, take what the kernel's domain sets hold as installed: the first
        delta then removes only what no name resolves to any more."""
        sets = self._domain_sets()

        def listing(nft: Kernel) -> dict[str, frozenset[str]]:
            out = {}
            for name in sets:
                elems = nft.set_elements(name)
                out[name] = frozenset(str(b.element_value(e)) for e in elems)
            return out

        if sets:
            self.installed = await self.writer.call(listing, writes=False)

    def _domain_sets(self) -> list[str]:
        bases = {base for s in self.domains.names.values() for base in s.bases}
        return sorted(en.domain_set(base, f) for base in bases for f in (4, 6))

    async def sync(self) -> int:
        """Make the kernel's domain sets hold what the table says: one transaction. While
        a name has never resolved since the start, nothing is removed (a failing resolver
        must not empty sets the kernel filled before)."""
        desired = self.domains.desired()
        if any(s.resolved_at is None for s in self.domains.names.values()):
            keep = set(self.installed) | set(desired)
            desired = {
                k: desired.get(k, frozenset()) | self.installed.get(k, frozenset()) for k in keep
            }
        cmds = element_delta(self.installed, desired)
        if not cmds:
            return 0
        await self.writer.elements(cmds)
        self.installed = dict(desired)
        return len(cmds)

    async def addresses(self, host: str) -> list[IPNetwork]:
        """A host name's addresses: the table's when it keeps the name fresh, else asked."""
        known = self.domains.addresses_of(host)
        if not known:
            if self.resolver is None:
                raise RequestError("the policy lists no egress.resolvers", code="E-NO-RESOLVERS")
            try:
                known = [a for a, _ in await self.resolver.resolve(host)]
            except ResolveError as exc:
                raise RequestError(
                    f"cannot resolve {host}: {exc.message}", code="E-RESOLVE"
                ) from None
        return [ipaddress.ip_network(a) for a in sorted(set(known))]

    def status(self) -> dict[str, Any]:
        st = self.domains.stats
        return {
            "names": len(self.domains.names),
            "failing": sum(1 for s in self.domains.names.values() if s.failing),
            "addresses": sum(len(v) for v in self.installed.values()),
            "rounds": st.rounds,
            "queries": st.queries,
            "failures": st.failures,
            "added": st.added,
            "removed": st.removed,
            "last_round_seconds": st.last_round_seconds,
        }
