"""Allowlisted names kept fresh: TTL-driven refresh scheduling and address retention
(layer L1, pure; time is an argument, resolving is the daemon's job through adapters/dns).

Owns: `DomainTable` — for each name, the addresses it resolved to, when to ask again and
what its failures were — and the desired contents of the domain sets, from which the daemon
computes element deltas. The rules:
  * after an answer, ask again when its smallest TTL runs out, bounded by
    [dns.min_refresh, dns.max_refresh];
  * an address that drops out of the answers stays allowed until its TTL plus dns.grace
    has passed since it was last seen (connections in flight, resolvers that rotate);
  * a failure (timeout, SERVFAIL, NXDOMAIN, an empty answer) never removes anything: the
    name keeps its addresses, and is retried with a backoff from min_refresh, doubling, at
    most every minute (or max_refresh, when shorter).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from aitherfwd.egress import names as en
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import DnsBounds

Answer = tuple[tuple[str, int], ...]  # (address text, ttl seconds)
RETRY_CAP = 60  # a failing name is asked again at least this often, whatever max_refresh


@dataclass
class NameState:
    bases: tuple[str, ...]  # the domain set bases this name fills
    addresses: dict[str, float] = field(default_factory=dict)  # address -> kept until
    next_refresh: float = 0.0
    failures: int = 0
    last_error: str | None = None
    resolved_at: float | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0


@dataclass
class DnsStats:
    rounds: int = 0
    queries: int = 0
    failures: int = 0
    added: int = 0
    removed: int = 0
    last_round_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


class DomainTable:
    def __init__(self, bounds: DnsBounds | None = None) -> None:
        self.bounds = bounds or DnsBounds()
        self.names: dict[str, NameState] = {}
        self.stats = DnsStats()

    def configure(self, hosts: Mapping[str, tuple[str, ...]], bounds: DnsBounds) -> list[str]:
        """A new policy: keep what is known of names that stay, forget names that go
        (their addresses leave the desired sets), new names are due at once."""
        self.bounds = bounds
        gone = sorted(set(self.names) - set(hosts))
        for name in gone:
            del self.names[name]
        for name, bases in hosts.items():
            if name in self.names:
                self.names[name].bases = bases
            else:
                self.names[name] = NameState(bases)
        return gone

    def due(self, now: float) -> list[str]:
        return sorted(k for k, s in self.names.items() if s.next_refresh <= now)

    def next_due(self) -> float | None:
        return min((s.next_refresh for s in self.names.values()), default=None)

    def _clamp(self, seconds: float) -> float:
        return min(max(seconds, self.bounds.min_refresh), self.bounds.max_refresh)

    def answered(self, name: str, answer: Answer, now: float) -> Change:
        """A successful, non-empty answer for `name` at `now`."""
        state = self.names[name]
        self.stats.queries += 1
        before = set(state.addresses)
        for addr, ttl in answer:
            state.addresses[addr] = now + ttl + self.bounds.grace
        state.failures, state.last_error, state.resolved_at = 0, None, now
        state.next_refresh = now + self._clamp(min(ttl for _, ttl in answer))
        expired = self._expire(state, now)
        added = tuple(sorted(set(state.addresses) - before))
        return Change(name, added, expired)

    def failed(self, name: str, error: str, now: float) -> None:
        """No usable answer: keep every address, retry with a bounded backoff."""
        state = self.names[name]
        self.stats.queries += 1
        self.stats.failures += 1
        state.failures += 1
        state.last_error = error
        backoff = self.bounds.min_refresh * 2 ** min(state.failures - 1, 16)
        state.next_refresh = now + min(
            self._clamp(backoff), max(RETRY_CAP, self.bounds.min_refresh)
        )

    def expire(self, now: float) -> list[Change]:
        """Drop addresses past their TTL plus grace — only for names whose last
        resolution worked (a failing resolver must not empty the allowlist)."""
        out = []
        for name, state in sorted(self.names.items()):
            if not state.failing:
                gone = self._expire(state, now)
                if gone:
                    out.append(Change(name, (), gone))
        return out

    @staticmethod
    def _expire(state: NameState, now: float) -> tuple[str, ...]:
        gone = tuple(sorted(a for a, until in state.addresses.items() if until <= now))
        for a in gone:
            del state.addresses[a]
        return gone

    def desired(self) -> dict[str, frozenset[str]]:
        """Set name -> the addresses it must hold (a union over the names filling it)."""
        out: dict[str, set[str]] = {}
        for state in self.names.values():
            for addr in state.addresses:
                fam = 6 if ":" in addr else 4
                for base in state.bases:
                    out.setdefault(en.domain_set(base, fam), set()).add(addr)
        return {k: frozenset(v) for k, v in out.items()}

    def addresses_of(self, name: str) -> list[str]:
        state = self.names.get(name)
        return sorted(state.addresses) if state else []

    def holds(self, base: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        text = str(address)
        return any(text in s.addresses and base in s.bases for s in self.names.values())


def element_delta(
    installed: Mapping[str, frozenset[str]], desired: Mapping[str, frozenset[str]]
) -> list[dict[str, object]]:
    """Element commands turning what the kernel holds into what is desired (one batch).
    Deletes go first, each preceded by an add, so a missing element cannot fail it."""
    cmds: list[dict[str, object]] = []
    names = sorted(set(installed) | set(desired))
    for s in names:
        gone = sorted(installed.get(s, frozenset()) - desired.get(s, frozenset()))
        if gone:
            cmds += [b.add(b.element(s, gone)), {"delete": b.element(s, gone)}]
    for s in names:
        new = sorted(desired.get(s, frozenset()) - installed.get(s, frozenset()))
        if new:
            cmds.append(b.add(b.element(s, new)))
    return cmds
