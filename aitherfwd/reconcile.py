"""Desired ruleset versus what the kernel holds: the transaction and the plan (layer L1, pure).

Owns: `Observed` (a cheap, element-free picture of our table), the one-batch transaction
that replaces every static object while leaving the dynamic sets — and so every ban and
sandbox grant with its remaining timeout — untouched, and the human-readable `Plan`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.compiler import Ruleset
from aitherfwd.nft import builders as b
from aitherfwd.nft import idle
from aitherfwd.nft import names as n

Json = b.Json


@dataclass(frozen=True, slots=True)
class Observed:
    """Our table as the kernel lists it tersely (no set elements)."""

    exists: bool
    chains: tuple[str, ...] = ()
    sets: dict[str, tuple[str, tuple[str, ...]]] = field(
        default_factory=dict
    )  # name -> (type, flags)
    maps: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()
    rules: tuple[tuple[str, str], ...] = ()  # (chain, comment)
    timeouts: tuple[str, ...] = ()  # ct timeout objects (nft/idle.py)

    @classmethod
    def from_listing(cls, listing: list[Json]) -> Observed:
        """Build from the `nftables` array of `list table inet aitherfwd` (terse)."""
        chains: list[str] = []
        sets: dict[str, tuple[str, tuple[str, ...]]] = {}
        maps: list[str] = []
        counters: list[str] = []
        rules: list[tuple[str, str]] = []
        timeouts: list[str] = []
        exists = False
        for item in listing:
            if "table" in item:
                exists = True
            elif "chain" in item:
                chains.append(item["chain"]["name"])
            elif "set" in item:
                s = item["set"]
                sets[s["name"]] = (str(s["type"]), tuple(sorted(s.get("flags", []))))
            elif "map" in item:
                maps.append(item["map"]["name"])
            elif "counter" in item:
                counters.append(item["counter"]["name"])
            elif "rule" in item:
                r = item["rule"]
                rules.append((r["chain"], str(r.get("comment", ""))))
            elif idle.KIND in item:
                timeouts.append(item[idle.KIND]["name"])
        return cls(
            exists, tuple(chains), sets, tuple(maps), tuple(counters), tuple(rules), tuple(timeouts)
        )

    @property
    def ruleset_sha256(self) -> str | None:
        for chain, comment in self.rules:
            if chain == n.META_CHAIN and comment.startswith("aitherfwd ruleset="):
                return comment.split()[1].removeprefix("ruleset=")
        return None


def _named(obj: Json, kind: str) -> dict[str, Any] | None:
    body = obj.get(kind)
    return body if isinstance(body, dict) else None


def transaction(desired: Ruleset, observed: Observed) -> list[Json]:
    """One batch: flush our chains, drop static sets/maps/chains/counters that go, add all.

    Dynamic sets are never deleted or flushed here; `add set` of an existing set is a no-op
    that keeps its elements and their timeouts (so are the country and list sets, filled
    by netlink: nft/geo.py). Shared sets (named by their contents) that stay are deleted
    and re-created with their elements (the chains are flushed first, so nothing refers to
    them), so a set another tool edited is repaired — not flushed and refilled: an element
    command makes libnftables 1.0.6 fetch every element in the namespace first, 4.8 s with
    a 300,000-range country set loaded, against 2 ms for this (docs/geo.md). Counters that
    stay keep their values, and rate-limit meters that stay keep their per-source buckets
    (they are not re-added: the kernel marks them `dynamic`, so an identical `add set`
    would be refused)."""
    want_chains = set(desired.names("chain"))
    want_counters = set(desired.names("counter"))
    cmds: list[Json] = []
    kept: set[str] = set()
    if observed.exists:
        base = {"family": n.FAMILY, "table": n.TABLE}
        cmds += [{"flush": {"chain": {**base, "name": c}}} for c in observed.chains]
        cmds += [{"delete": {"map": {**base, "name": m}}} for m in observed.maps]
        want_sets = {_set_key(o["set"]) for o in desired.objects if "set" in o}
        for s, (type_, flags) in observed.sets.items():
            if s in n.DYNAMIC_SET_NAMES:
                continue
            same = (s, type_, tuple(f for f in flags if f != "dynamic")) in want_sets
            if same and not n.is_shared_set(s):
                kept.add(s)
            else:  # a shared set is re-created: its contents are what its name promises
                cmds.append({"delete": {"set": {**base, "name": s}}})
        cmds += [
            {"delete": {"chain": {**base, "name": c}}}
            for c in observed.chains
            if c not in want_chains
        ]
        cmds += [
            {"delete": {"counter": {**base, "name": c}}}
            for c in observed.counters
            if c not in want_counters
        ]
    cmds += [c for c in desired.commands() if b.added_set_name(c) not in kept]
    return cmds


@dataclass(frozen=True, slots=True)
class Plan:
    added: list[str]
    removed: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def render(self) -> str:
        if not self.changed:
            return "no changes\n"
        lines = [f"+ {x}" for x in self.added] + [f"- {x}" for x in self.removed]
        return "\n".join(lines) + f"\n{len(self.added)} to add, {len(self.removed)} to remove\n"


def plan(desired: Ruleset, observed: Observed) -> Plan:
    """What `apply` would change: chains, sets, maps, counters and rules (by their comments,
    which carry a hash of the rule's expressions)."""
    want: Counter[str] = Counter()
    for obj in desired.objects:
        for kind in ("chain", "set", "map", "counter", idle.KIND):
            body = _named(obj, kind)
            if body is not None:
                want[f"{kind} {body['name']}"] += 1
        body = _named(obj, "rule")
        if body is not None:
            want[_rule_key(body["chain"], body["comment"])] += 1
    have: Counter[str] = Counter()
    if observed.exists:
        have.update(f"chain {c}" for c in observed.chains)
        have.update(f"set {s}" for s in observed.sets)
        have.update(f"map {m}" for m in observed.maps)
        have.update(f"counter {c}" for c in observed.counters)
        # a stale timeout object stays (nft/idle.py: libnftables cannot delete one)
        wanted = set(desired.names(idle.KIND))
        have.update(f"{idle.KIND} {t}" for t in observed.timeouts if t in wanted)
        have.update(_rule_key(c, comment) for c, comment in observed.rules)
    else:
        want["table inet aitherfwd"] += 1
    want.pop(_IGNORED, None)
    have.pop(_IGNORED, None)
    return Plan(sorted((want - have).elements()), sorted((have - want).elements()))


_IGNORED = "-"


def _rule_key(chain: str, comment: str) -> str:
    """Rules are told apart by chain and comment. The set-hash chain's comments record the
    content hash of each static set and map, so a changed zone map shows up by name; the
    meta chain's ruleset and policy hashes are no change of their own."""
    if chain == n.SET_HASH_CHAIN:
        name, _, digest = comment.rpartition(" #")
        return f"{name} contents #{digest}"
    if chain == n.META_CHAIN:
        return _IGNORED
    return f"rule {chain}: {comment}"


def _index(ruleset: Ruleset) -> tuple[dict[str, dict[str, Json]], dict[str, list[Json]]]:
    """Named objects by kind and name, and each chain's rules in order."""
    objects: dict[str, dict[str, Json]] = {
        "counter": {},
        "set": {},
        "map": {},
        "chain": {},
        idle.KIND: {},
    }
    rules: dict[str, list[Json]] = {}
    for obj in ruleset.objects:
        for kind, body in obj.items():
            if kind in objects:
                objects[kind][body["name"]] = obj
            elif kind == "rule":
                rules.setdefault(body["chain"], []).append(obj)
    return objects, rules


def delta(previous: Ruleset, desired: Ruleset) -> list[Json]:
    """One batch turning `previous` (what we applied last) into `desired`, touching only what
    differs: chains whose rules changed are flushed and refilled, changed zone maps flushed
    and refilled, removed objects deleted; unchanged chains keep their rules and counters
    their values. No listing of the kernel is needed — the daemon knows what it applied. If
    the kernel drifted meanwhile the batch fails as a whole and the caller falls back to
    `transaction`."""
    old_obj, old_rules = _index(previous)
    new_obj, new_rules = _index(desired)
    base = {"family": n.FAMILY, "table": n.TABLE}
    changed_chains = sorted(
        c
        for c in new_obj["chain"]
        if c in old_obj["chain"]
        and _signature(old_rules.get(c, [])) != _signature(new_rules.get(c, []))
    )
    gone = {k: sorted(set(old_obj[k]) - set(new_obj[k])) for k in old_obj}
    changed_maps = sorted(
        m for m in new_obj["map"] if m in old_obj["map"] and old_obj["map"][m] != new_obj["map"][m]
    )
    # a changed map is re-created with its elements, not flushed and refilled: an element
    # command makes libnftables 1.0.6 fetch every element in the namespace first (seconds
    # with a large country set loaded). The chains that look it up are refilled with it.
    users = {
        c
        for c, rules in new_rules.items()
        if c in old_obj["chain"] and any(_looks_up(r, changed_maps) for r in rules)
    }
    changed_chains = sorted(set(changed_chains) | users)
    changed_sets = sorted(
        s
        for s in new_obj["set"]
        if s in old_obj["set"]
        and old_obj["set"][s] != new_obj["set"][s]
        and s not in n.DYNAMIC_SET_NAMES
    )
    cmds: list[Json] = [
        {"flush": {"chain": {**base, "name": c}}} for c in changed_chains + gone["chain"]
    ]
    cmds += [{"delete": {"map": {**base, "name": m}}} for m in gone["map"] + changed_maps]
    cmds += [{"delete": {"set": {**base, "name": s}}} for s in gone["set"] + changed_sets]
    cmds += [{"delete": {"chain": {**base, "name": c}}} for c in gone["chain"]]
    cmds += [{"delete": {"counter": {**base, "name": c}}} for c in gone["counter"]]
    for kind in ("counter", idle.KIND, "set", "chain", "map"):
        for name, obj in new_obj[kind].items():
            if name not in old_obj[kind] or name in changed_sets or name in changed_maps:
                cmds.append(b.add(obj))
    for chain in sorted(set(new_rules) - set(old_obj["chain"])) + changed_chains:
        cmds += [b.add(r) for r in new_rules.get(chain, [])]
    return cmds


def _looks_up(rule: Json, maps: list[str]) -> bool:
    if not maps:
        return False
    text = json.dumps(rule)
    return any(f'"@{m}"' in text for m in maps)


def _signature(rules: list[Json]) -> list[str]:
    """A chain's rules, compared cheaply: the compiler's comments end in ` #<hash of the
    expressions>`, which stands for the rule; any other rule counts by its expressions."""
    out = []
    for obj in rules:
        body = obj["rule"]
        comment = str(body.get("comment", ""))
        out.append(comment if " #" in comment else f"{comment} {body['expr']!r}")
    return out


def _set_key(body: Json) -> tuple[str, str, tuple[str, ...]]:
    """A set's identity for "keep it": name, type and flags (the kernel adds `dynamic` to
    sets that rules update, so it is left out of the comparison)."""
    flags = tuple(sorted(f for f in body.get("flags", []) if f != "dynamic"))
    return body["name"], str(body["type"]), flags
