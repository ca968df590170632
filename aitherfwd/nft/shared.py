"""Named sets shared by content (layer L1, pure).

Owns: turning the value lists of rules (port lists, source prefixes, protocol and day lists)
into named sets whose name is a hash of their type and contents, so the same list anywhere
in the ruleset is one kernel set. The kernel pays for every set it creates (each new set
walks the table's sets and the transaction), and an anonymous set is created again with
every rule that carries it; a shared set is created once and survives every reload that
keeps it. A name says everything about the contents: a changed list is a new set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.policy.model import IPNetwork, PortRange

Json = b.Json


class SharedSets:
    """The content-named sets one compilation refers to, in first-use order."""

    def __init__(self) -> None:
        self._sets: dict[str, Json] = {}
        self._refs: dict[Hashable, Any] = {}

    def value(
        self,
        key: Hashable,
        kind: str,
        type_: str,
        values: Callable[[], list[Any]],
        *,
        interval: Callable[[], bool] | bool = False,
    ) -> Any:
        """The right-hand side of a match on `values`: the value itself when there is one,
        else a reference `@<kind>_<hash>` to the shared set holding them. `key` identifies
        the values cheaply (model objects, not JSON), so each list is built and hashed once."""
        ref = self._refs.get((kind, key))
        if ref is not None:
            return ref
        items = values()
        if len(items) == 1:
            ref = items[0]
        else:
            flags = ["interval"] if (interval() if callable(interval) else interval) else []
            digest = hashlib.sha256(repr((type_, flags, items)).encode()).hexdigest()
            name = n.shared_set(kind, digest)
            self._sets.setdefault(name, b.set_(name, type_, flags, elements=items))
            ref = f"@{name}"
        self._refs[(kind, key)] = ref
        return ref

    def ports(self, ranges: tuple[PortRange, ...]) -> Any:
        """Destination ports, already merged by the parser (an interval set refuses
        overlapping ranges)."""
        return self.value(
            ranges,
            "ports",
            "inet_service",
            lambda: [r.lo if r.lo == r.hi else b.range_(r.lo, r.hi) for r in ranges],
            interval=lambda: any(r.lo != r.hi for r in ranges),
        )

    def prefixes(self, family: int, nets: tuple[IPNetwork, ...]) -> Any:
        """Collapsed prefixes of one family (overlapping intervals are refused too)."""
        return self.value(
            nets,
            f"net{family}",
            "ipv4_addr" if family == 4 else "ipv6_addr",
            lambda: [b.prefix(str(c.network_address), c.prefixlen) for c in nets],
            interval=True,
        )

    def constant(self, kind: str, type_: str, values: tuple[Any, ...]) -> Any:
        """A list of plain values (protocols, ICMPv6 types, week days)."""
        return self.value(values, kind, type_, lambda: list(values))

    def adopt(self, sets: Iterable[Json]) -> None:
        """Take in set definitions made by another instance (a memoised rule's)."""
        for obj in sets:
            self._sets.setdefault(obj["set"]["name"], obj)

    def objects(self) -> list[Json]:
        """The set definitions, sorted by name (the output must not depend on rule order)."""
        return [self._sets[name] for name in sorted(self._sets)]
