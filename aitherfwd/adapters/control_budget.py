"""Control-socket budgets (layer L2): how many connections and body bytes peers may hold.

Owns: `ConnectionLimits` and `ConnectionBudget` (connections in total, per peer uid, and a
room only administrators may use, so that no number of read-only connections can lock the
admin out), `BodyBudget` (request-body bytes held in memory at once across every
connection, with the same admin room), and `connection_cap()`, the connection total the
descriptor limit allows once the reserve for the daemon's own work (libnftables' netlink
socket, the store, the audit files, DNS, conntrack) is set aside.

These are counters only; adapters/control_server.py takes and gives back. Pure bookkeeping:
must not import anything of the firewall, nor do I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aitherfwd.adapters.control_peer import Peer

# Descriptors never handed to control connections: libnftables must always be able to open
# its netlink socket (it calls exit() when it cannot), and the store, audit files, conntrack,
# DNS and metrics need theirs.
FD_RESERVE = 256


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """`total` connections at once; non-admin peers at most `per_uid` each and together at
    most `total - admin_reserve`; `linger` refused connections are answered and drained at
    once (beyond that a refused connection is closed straight away)."""

    total: int = 256
    per_uid: int = 16
    admin_reserve: int = 32
    linger: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.admin_reserve < self.total or self.per_uid < 1 or self.linger < 0:
            raise ValueError(f"inconsistent connection limits {self}")


def connection_cap(limits: ConnectionLimits, nofile_soft: int) -> ConnectionLimits:
    """The limits to use: the configured total, lowered so that connections plus lingering
    refusals plus `FD_RESERVE` stay within the descriptor limit; the admin room shrinks
    with it (to at most half the total)."""
    total = max(2, min(limits.total, nofile_soft - FD_RESERVE - limits.linger))
    if total == limits.total:
        return limits
    reserve = min(limits.admin_reserve, total // 2)
    return ConnectionLimits(total, limits.per_uid, reserve, limits.linger)


class ConnectionBudget:
    """Connections held now, by peer uid; `take` says why a new one is refused, or None."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.by_uid: Counter[int] = Counter()
        self.users = 0  # connections of non-admin peers
        self.admins = 0

    def take(self, uid: int, *, admin: bool) -> str | None:
        lim = self.limits
        if self.users + self.admins >= lim.total:
            return f"too many connections (limit {lim.total})"
        if admin:
            self.admins += 1
            return None
        if self.users >= lim.total - lim.admin_reserve:
            return (
                f"too many connections (limit {lim.total - lim.admin_reserve} for non-admin "
                f"peers; {lim.admin_reserve} kept for administrators)"
            )
        if self.by_uid[uid] >= lim.per_uid:
            return f"too many connections from uid {uid} (limit {lim.per_uid})"
        self.users += 1
        self.by_uid[uid] += 1
        return None

    def give(self, uid: int, *, admin: bool) -> None:
        if admin:
            self.admins -= 1
            return
        self.users -= 1
        self.by_uid[uid] -= 1
        if self.by_uid[uid] <= 0:
            del self.by_uid[uid]


class BodyBudget:
    """Request-body bytes held at once: at most `total`, of which non-admin requests may
    hold at most `total - admin_reserve`."""

    def __init__(self, total: int, admin_reserve: int) -> None:
        if not 0 <= admin_reserve <= total:
            raise ValueError("the admin body reserve must be within the total")
        self.total, self.admin_reserve = total, admin_reserve
        self.used = 0
        self.users_used = 0

    def take(self, size: int, *, admin: bool) -> bool:
        if self.used + size > self.total:
            return False
        if not admin and self.users_used + size > self.total - self.admin_reserve:
            return False
        self.used += size
        if not admin:
            self.users_used += size
        return True

    def give(self, size: int, *, admin: bool) -> None:
        self.used -= size
        if not admin:
            self.users_used -= size


@dataclass(frozen=True, slots=True)
class Admission:
    """What the daemon says of a peer at accept: administrators use the admin room and have
    no per-uid cap."""

    admin: bool


class Gate(Protocol):
    """The daemon's authorisation, asked by the transport before it reads anything."""

    def admit(self, peer: Peer) -> Admission | None:
        """At accept, before any read: None closes the connection (the peer has no role)."""

    def head(self, peer: Peer, method: str, path: str) -> int:
        """After the request head, before its body: the body limit for this peer and route;
        raises a coded AitherError (404, 405, 403 ...) to refuse the request."""


class OpenGate:
    """Every peer is an administrator; body limit `max_body`, or the larger one of a bulk
    (method, path). For tests and tools that serve a trusted handler."""

    def __init__(self, max_body: int, bulk: Iterable[tuple[str, str, int]] = ()) -> None:
        self.max_body = max_body
        self.bulk = {(m, p): limit for m, p, limit in bulk}

    def admit(self, peer: Peer) -> Admission | None:
        return Admission(admin=True)

    def head(self, peer: Peer, method: str, path: str) -> int:
        return self.bulk.get((method, path), self.max_body)
