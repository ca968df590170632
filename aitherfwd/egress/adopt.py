"""Sandbox grants read back from the kernel's sets (layer L1, pure).

Owns: turning the elements listed from `sandbox_v4/v6`, `sandbox_v4_net/v6_net` and
`sandbox_port_v4/v6` into `Grant`s — the key, the remaining timeout, the scope and host
from the element's comment (`<scope>` or `<scope> <host>`), and the ports of a port
grant (one element per port, gathered by address). A cold start after a store recovery
or a missed write adopts these, so a grant the kernel enforces can be listed and revoked.
Elements of a shape we never write are skipped. Nothing here talks to the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from aitherfwd.egress import names as en
from aitherfwd.egress.sandbox import Grant, key_of
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b

SANDBOX_SETS = (
    *en.SANDBOX_HASH.values(),
    *en.SANDBOX_NET.values(),
    *en.PORT_SETS.values(),
)
ADOPTED_SCOPE = "kernel"  # the scope of an adopted element without a comment


def list_sets(set_elements: Callable[[str], list[Any]]) -> list[tuple[str, list[Any]]]:
    """(name, elements) of every sandbox set the kernel has, through the Kernel port's
    `set_elements` (a set the policy does not have is skipped)."""
    listed = []
    for name in SANDBOX_SETS:
        try:
            listed.append((name, set_elements(name)))
        except ApplyError:
            continue
    return listed


def listed_sets(
    set_elements: Callable[[str], list[Any]], names: Iterable[str]
) -> dict[str, set[str] | None]:
    """Element keys of each named set (None: the set is gone), through the Kernel port's
    `set_elements`: reads only the kernel, so it may run in the writer thread."""
    out: dict[str, set[str] | None] = {}
    for name in names:
        try:
            out[name] = {b.element_key(e) for e in set_elements(name)}
        except ApplyError:
            out[name] = None
    return out


def _key(value: Any) -> str | None:
    """The grant key of an element's address part (text or prefix object)."""
    try:
        if isinstance(value, str):
            return key_of(ipaddress.ip_network(value))
        if isinstance(value, dict) and "prefix" in value:
            p = value["prefix"]
            return key_of(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))
    except (ValueError, KeyError, TypeError):
        return None
    return None


def grants_from_elements(listed: Iterable[tuple[str, list[Any]]], now: float) -> dict[str, Grant]:
    """(set name, its elements) pairs → the grants they make, by key. A port grant's end
    is its latest element's; an element without a timeout (never written by us) lasts an
    hour in our books, the kernel keeps it until revoked."""
    found: dict[str, Grant] = {}
    for set_name, elements in listed:
        port_set = set_name in en.PORT_SETS.values()
        for elem in elements:
            fields = b.element_fields(elem)
            val = fields.get("val")
            port: int | None = None
            if port_set:
                parts = val.get("concat") if isinstance(val, dict) else None
                if not isinstance(parts, list) or len(parts) != 2 or not isinstance(parts[1], int):
                    continue
                val, port = parts
            key = _key(val)
            if key is None:
                continue
            left = fields.get("expires", fields.get("timeout"))
            expires = now + (left if isinstance(left, int | float) and left > 0 else 3600)
            comment = str(fields.get("comment") or ADOPTED_SCOPE)
            scope, _, host = comment.partition(" ")
            old = found.get(key)
            ports = old.ports if old is not None else ()
            if port is not None and port not in ports:
                ports = tuple(sorted((*ports, port)))
            if old is not None:
                expires = max(expires, old.expires_at)
            found[key] = Grant(key, expires, scope, ports, now, host or None, None)
    return found
