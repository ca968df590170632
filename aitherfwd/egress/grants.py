"""The table of live sandbox grants, indexed (layer L1, pure).

Owns: `GrantTable` — grants by key (a dict: single addresses are found in O(1)), the
prefix grants of each family as sorted, disjoint intervals (found by bisection in
O(log n)), the single addresses granted with ports (to find, in O(log n), an address
grant inside a prefix grant sharing a port: one `address . port` element inside a
`prefix . port` one makes the kernel refuse the whole batch), counts per family, per
scope and per kernel set kept as grants come and go, and a heap of expiries (pruning
costs nothing until a grant is due). No operation sorts all grants but `active`, the
listing. Time is an argument; nothing here talks to the kernel or the disk.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
from collections.abc import Iterable
from typing import Any

from aitherfwd.egress.sandbox import Grant, GrantError, key_of
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import IPAddress, IPNetwork, PortRange

Span = tuple[int, int, str]  # first, last address (as integers), grant key


def _span(g: Grant) -> Span:
    net = g.network
    return int(net.network_address), int(net.broadcast_address), g.key


class GrantTable:
    """Live grants by key. Expired ones are pruned lazily (the kernel expires its own)."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        self._nets: dict[int, list[Span]] = {4: [], 6: []}  # prefix grants, sorted
        self._ported: dict[int, list[int]] = {4: [], 6: []}  # single addresses with ports
        self._family: dict[int, int] = {4: 0, 6: 0}
        self._scopes: dict[str, int] = {}
        self._sets: dict[str, int] = {}
        self._expiry: list[tuple[float, str]] = []
        self.update_in_place = False  # see BlockTable.update_in_place
        self.lapsed: list[Grant] = []  # pruned by a reader, until `take_lapsed`

    def __len__(self) -> int:
        return len(self._grants)

    # --- bookkeeping ---------------------------------------------------------------------

    def _add(self, g: Grant) -> None:
        old = self._grants.get(g.key)
        if old is not None:
            self._drop(old)
        self._grants[g.key] = g
        fam = g.family
        self._family[fam] += 1
        self._scopes[g.scope] = self._scopes.get(g.scope, 0) + 1
        for s, _ in g.values():
            self._sets[s] = self._sets.get(s, 0) + 1
        if not g.single:
            bisect.insort(self._nets[fam], _span(g))
        elif g.ports:
            bisect.insort(self._ported[fam], int(ipaddress.ip_address(g.key)))
        heapq.heappush(self._expiry, (g.expires_at, g.key))

    def _drop(self, g: Grant) -> None:
        del self._grants[g.key]
        fam = g.family
        self._family[fam] -= 1
        left = self._scopes[g.scope] - 1
        if left:
            self._scopes[g.scope] = left
        else:
            del self._scopes[g.scope]
        for s, _ in g.values():
            self._sets[s] -= 1
        if not g.single:
            spans = self._nets[fam]
            del spans[bisect.bisect_left(spans, _span(g))]
        elif g.ports:
            ported = self._ported[fam]
            del ported[bisect.bisect_left(ported, int(ipaddress.ip_address(g.key)))]

    def _lapse(self, now: float) -> None:
        """`prune` for a reader: what lapsed waits in `lapsed` for the owner, who records
        it (the store, the audit line) — a reader pruning it must not lose the expiry."""
        self.lapsed += self.prune(now)

    def take_lapsed(self) -> list[Grant]:
        out, self.lapsed = self.lapsed, []
        return out

    def prune(self, now: float) -> list[Grant]:
        gone = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            g = self._grants.get(key)
            if g is not None and g.expires_at == at:  # not a replaced or revoked grant
                self._drop(g)
                gone.append(g)
        return gone

    # --- questions -----------------------------------------------------------------------

    def get(self, key: str, now: float) -> Grant | None:
        g = self._grants.get(key)
        return g if g is not None and g.expires_at > now else None

    def active(self, now: float) -> list[Grant]:
        self._lapse(now)
        return sorted(self._grants.values(), key=lambda g: g.key)

    def _prefix_holding(self, fam: int, lo: int, hi: int) -> Grant | None:
        """The prefix grant overlapping [lo, hi], if any (prefix grants are disjoint: the
        one starting last at or before `hi` is the only candidate)."""
        spans = self._nets[fam]
        i = bisect.bisect_right(spans, (hi, 1 << 129, "")) - 1
        if i >= 0 and spans[i][1] >= lo:
            return self._grants.get(spans[i][2])
        return None

    def scope_count(self, scope: str) -> int:
        return self._scopes.get(scope, 0)

    def check_overlap(self, net: IPNetwork, now: float, ports: tuple[int, ...] = ()) -> None:
        """Raise GrantError (E-GRANT-OVERLAP) when granting `net` (with `ports`) would
        overlap a live grant in the same kernel set: prefixes overlapping each other, or an
        address inside a prefix both granted on a common port."""
        self._lapse(now)
        key, fam = key_of(net), net.version
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.prefixlen == net.max_prefixlen:
            if ports:
                held = self._prefix_holding(fam, lo, hi)
                common = set(ports) & set(held.ports) if held is not None else set()
                if held is not None and common:
                    raise GrantError(
                        f"{key} lies inside the granted prefix {held.key} with the same port "
                        f"{min(common)}; revoke one of them first",
                        code="E-GRANT-OVERLAP",
                    )
            return
        held = self._prefix_holding(fam, lo, hi)
        if held is not None and held.key != key:  # its own earlier grant is replaced
            raise GrantError(
                f"{key} overlaps the granted prefix {held.key}; revoke it first",
                code="E-GRANT-OVERLAP",
            )
        if ports:
            ported = self._ported[fam]
            for i in range(bisect.bisect_left(ported, lo), bisect.bisect_right(ported, hi)):
                inner = self._grants[str(ipaddress.ip_address(ported[i]))]
                common = set(ports) & set(inner.ports)
                if common:
                    raise GrantError(
                        f"{key} holds the granted address {inner.key} with the same port "
                        f"{min(common)}; revoke one of them first",
                        code="E-GRANT-OVERLAP",
                    )

    def lookup(
        self, address: IPAddress, port: int | None, allowed: tuple[PortRange, ...], now: float
    ) -> Grant | None:
        """The live grant that lets this connection out, if any: O(1) for an address
        grant, O(log n) for a prefix grant."""
        g = self.get(str(address), now)
        if g is not None and g.covers(address, port, allowed):
            return g
        n = int(address)
        g = self._prefix_holding(address.version, n, n)
        if g is not None and g.expires_at > now and g.covers(address, port, allowed):
            return g
        return None

    def counts(self, now: float) -> dict[str, int]:
        self._lapse(now)
        return {"grants_v4": self._family[4], "grants_v6": self._family[6]}

    def set_counts(self, now: float) -> dict[str, int]:
        """Live kernel elements per sandbox set (a grant with ports has one per port)."""
        self._lapse(now)
        return {s: c for s, c in sorted(self._sets.items()) if c}

    # --- changes -------------------------------------------------------------------------

    def put(self, grants: Iterable[Grant], now: float) -> list[Any]:
        """Record grants (replacing earlier ones for the same key); the kernel commands."""
        touch: dict[str, list[Any]] = {}
        adds: dict[str, list[Any]] = {}
        for g in grants:
            old = self.get(g.key, now)
            same = old is not None and self.update_in_place and old.values() == g.values()
            if old is not None and not same:  # it may expire any moment: add, delete, add
                for s, v in old.values():
                    touch.setdefault(s, []).append(v)
            for s, e in g.elements(now):
                adds.setdefault(s, []).append(e)
            self._add(g)
        cmds: list[Any] = [b.add(b.element(s, v)) for s, v in sorted(touch.items())]
        cmds += [{"delete": b.element(s, v)} for s, v in sorted(touch.items())]
        cmds += [b.add(b.element(s, v)) for s, v in sorted(adds.items())]
        return cmds

    def remove(self, key: str, now: float) -> tuple[Grant, list[Any]] | None:
        g = self.get(key, now)
        if g is None:
            return None
        self._drop(g)
        cmds: list[Any] = []
        for s, v in g.values():
            cmds += [b.add(b.element(s, [v])), {"delete": b.element(s, [v])}]
        return g, cmds

    def restore_commands(self, now: float) -> list[Any]:
        by_set: dict[str, list[Any]] = {}
        for g in self.active(now):
            for s, e in g.elements(now):
                by_set.setdefault(s, []).append(e)
        return [b.add(b.element(s, v)) for s, v in sorted(by_set.items())]

    def load(self, grants: Iterable[Grant]) -> None:
        for g in grants:
            self._add(g)
