"""The inbound view of a policy as JSON, for the watch stream (layer L1, pure).

Owns: `encode` (Policy → the JSON-able view of what judges a new inbound connection: the
default policy, the zones with their CIDRs, the rules with everything the evaluator reads —
zones, protocol, resolved ports, source CIDRs, time window, rate limit, `path_prefix`,
`authenticated` — and the content hash), `decode` (the view → a `Policy` the evaluator takes,
every field checked; raises ValueError) and the block records of the stream (`block_record`,
`decode_block`). A round trip keeps every verdict of `aitherfwd.evaluator` (property-tested
in tests/unit/test_asgi_view.py). Services, descriptions, egress, reputation and notify
settings are not part of the view: an enforcement point outside the daemon needs none of them.

Must not import adapters, the daemon, or do I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aitherfwd.dynamic.blockrecords import Block, address_text
from aitherfwd.policy.model import (
    Action,
    AppliesTo,
    PortMatch,
    PortRange,
    Protocol,
    RateLimit,
    Rule,
    Settings,
    TimeWindow,
    Zone,
)
from aitherfwd.policy.model import Policy as PolicyModel

VIEW_VERSION = 1


def encode(policy: PolicyModel) -> dict[str, Any]:
    return {
        "version": VIEW_VERSION,
        "sha256": policy.sha256,
        "default_policy": str(policy.settings.default_policy),
        "zones": [
            {"name": z.name, "cidrs": [str(c) for c in z.cidrs], "containers": z.containers}
            for z in policy.zones
        ],
        "rules": [_rule(r) for r in policy.rules],
    }


def _rule(rule: Rule) -> dict[str, Any]:
    tw = rule.time_window
    return {
        "name": rule.name,
        "action": str(rule.action),
        "zones": list(rule.zones) if rule.zones is not None else None,
        "protocol": str(rule.protocol),
        "ports": [
            {"protocol": str(pm.protocol), "ranges": [[r.lo, r.hi] for r in pm.ranges]}
            for pm in rule.ports
        ],
        "source_cidrs": [str(c) for c in rule.source_cidrs],
        "time_window": (
            None if tw is None else {"days": sorted(tw.days), "start": tw.start, "end": tw.end}
        ),
        "rate_limit": (
            None
            if rule.rate_limit is None
            else {"rate": rule.rate_limit.rate, "burst": rule.rate_limit.burst}
        ),
        "path_prefix": rule.path_prefix,
        "authenticated": rule.authenticated,
        "applies_to": None if rule.applies_to is None else str(rule.applies_to),
        # kept so that such a rule does not match where the country or list is unknown
        "source_countries": list(rule.source_countries),
        "source_lists": list(rule.source_lists),
    }


def _get(obj: Any, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object holding {key!r}")
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"{key!r} is missing or of the wrong type")
    return value


def _networks(items: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(items, list):
        raise ValueError(f"{key!r} must be a list")
    return tuple(ipaddress.ip_network(str(c)) for c in items)


def decode(view: Any) -> PolicyModel:
    """The view back into a Policy; ValueError for anything that does not fit."""
    if _get(view, "version", int) != VIEW_VERSION:
        raise ValueError(f"unknown policy view version {view.get('version')!r}")
    zones = tuple(
        Zone(
            _get(z, "name", str),
            _networks(_get(z, "cidrs", list), "cidrs"),
            containers=bool(_get(z, "containers", bool, optional=True)),
        )
        for z in _get(view, "zones", list)
    )
    rules = tuple(_decode_rule(r) for r in _get(view, "rules", list))
    return PolicyModel(
        version=1,
        settings=Settings(default_policy=Action(_get(view, "default_policy", str))),
        zones=zones,
        services=(),
        rules=rules,
        sha256=_get(view, "sha256", str),
    )


def _decode_rule(r: Any) -> Rule:
    zones = _get(r, "zones", list, optional=True)
    tw = _get(r, "time_window", dict, optional=True)
    rl = _get(r, "rate_limit", dict, optional=True)
    ports = tuple(
        PortMatch(
            Protocol(_get(pm, "protocol", str)),
            tuple(PortRange(int(lo), int(hi)) for lo, hi in _get(pm, "ranges", list)),
        )
        for pm in _get(r, "ports", list)
    )
    return Rule(
        name=_get(r, "name", str),
        action=Action(_get(r, "action", str)),
        zones=tuple(str(z) for z in zones) if zones is not None else None,
        protocol=Protocol(_get(r, "protocol", str)),
        ports=ports,
        services=(),
        source_cidrs=_networks(_get(r, "source_cidrs", list), "source_cidrs"),
        time_window=(
            None
            if tw is None
            else TimeWindow(
                frozenset(int(d) for d in _get(tw, "days", list)),
                _get(tw, "start", int),
                _get(tw, "end", int),
            )
        ),
        rate_limit=None if rl is None else RateLimit(_get(rl, "rate", int), _get(rl, "burst", int)),
        log=False,
        path_prefix=_get(r, "path_prefix", str, optional=True),
        authenticated=_get(r, "authenticated", bool, optional=True),
        applies_to=_applies_to(_get(r, "applies_to", str, optional=True)),
        source_countries=_names(r, "source_countries"),
        source_lists=_names(r, "source_lists"),
    )


def _names(r: Any, key: str) -> tuple[str, ...]:
    names = _get(r, key, list, optional=True) or []
    return tuple(str(n) for n in names)


def _applies_to(value: str | None) -> AppliesTo | None:
    return None if value is None else AppliesTo(value)


def block_record(blk: Block) -> dict[str, Any]:
    """One block in the stream: its key, expiry (seconds since the epoch, None: permanent)."""
    return {"address": blk.key, "expires_at": blk.expires_at}


def decode_block(record: Any, now: float) -> Block:
    """A stream record back into a Block the middleware's table takes; ValueError if bad."""
    key = _get(record, "address", str)
    expires = _get(record, "expires_at", (int, float), optional=True)
    canonical = address_text(ipaddress.ip_network(key, strict=True))
    if canonical != key:
        raise ValueError(f"{key!r} is not a canonical block key")
    return Block(key, None if expires is None else float(expires), "", "daemon", now)
