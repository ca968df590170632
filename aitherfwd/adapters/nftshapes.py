"""The shape of one of our sets, as the element encoder needs it (layer L2, pure).

Owns: `SetShape` — a set's address family, whether it holds intervals, and whether its
key is `address . inet_service` — read from libnftables' spelling of the set's type (a
list, or the text `Observed` keeps of one) and flags: for adapters/nftelements.py, and
for the element writer, which learns the shapes of our sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SetShape:
    """What the encoder needs to know of a set: its address family, whether it holds
    intervals, and whether its key is `address . inet_service`."""

    name: str
    family: int  # 4 or 6
    interval: bool
    with_port: bool

    @classmethod
    def of(cls, name: str, type_: object, flags: Iterable[str]) -> SetShape | None:
        """From a set's libnftables type (`"ipv4_addr"`, `["ipv6_addr", "inet_service"]`, or
        the text of either) and flags; None for a shape we do not write by netlink."""
        parts = type_ if isinstance(type_, list) else _type_parts(str(type_))
        names = [str(p) for p in parts]
        if names[0] not in ("ipv4_addr", "ipv6_addr") or names[1:] not in ([], ["inet_service"]):
            return None
        family = 4 if names[0] == "ipv4_addr" else 6
        return cls(name, family, "interval" in set(flags), len(names) == 2)


def _type_parts(text: str) -> list[str]:
    """`"['ipv4_addr', 'inet_service']"` (how Observed keeps a list) or `"ipv4_addr"`."""
    cleaned = text.strip("[]").replace("'", "").replace('"', "")
    return [p.strip() for p in cleaned.replace(" . ", ",").split(",") if p.strip()]
