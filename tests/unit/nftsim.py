"""A model of table `inet aitherfwd` for unit tests: applies libnftables JSON batches as the
kernel does, for the commands `reconcile` emits, without root.

Owns: objects with their definitions, elements and an identity serial (a counter re-created
loses its value, a set re-created loses its elements), rules with handles, and the kernel's
refusals that matter to reconcile: a rule naming a missing chain, set, map or counter; the
deletion of something a rule or a map still references or of a chain that still has rules;
`add set` of an existing set under another definition — including a set the kernel marked
`dynamic` because a rule updates it from the packet path. A batch is atomic: a refusal
leaves the table as it was. Must not import the nftables binding.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.compiler import Ruleset
from aitherfwd.nft import names as n

Json = dict[str, Any]
NAMED = ("chain", "set", "map", "counter", "ct timeout")


class Refused(Exception):
    """The kernel would refuse the batch (nothing of it is applied)."""


@dataclass
class Obj:
    body: Json  # the definition, without elements
    elems: list[Any]
    serial: int  # new only when the object is created anew


@dataclass
class Table:
    exists: bool = False
    objs: dict[tuple[str, str], Obj] = field(default_factory=dict)
    # chain -> its rules in order, each with the handle the kernel gave it
    rules: dict[str, list[tuple[int, Json]]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def of(cls, ruleset: Ruleset) -> Table:
        table = cls()
        table.apply(ruleset.commands())
        return table

    def apply(self, commands: list[Json]) -> None:
        """All of `commands` as one transaction, or `Refused` and no change."""
        work = copy.deepcopy(self)
        for command in commands:
            work._one(command)
        self.__dict__.update(work.__dict__)

    def add_elements(self, set_name: str, elems: list[Any]) -> None:
        self.apply([{"add": {"element": {"name": set_name, "elem": elems}}}])

    def elements(self, name: str) -> list[Any]:
        return next(o.elems for (k, nm), o in self.objs.items() if nm == name and k != "chain")

    def serial(self, kind: str, name: str) -> int:
        return self.objs[kind, name].serial

    def handles(self, chain: str) -> list[int]:
        return [h for h, _ in self.rules[chain]]

    def listing(self) -> list[Json]:
        """What `list table inet aitherfwd` (terse) answers: no elements."""
        if not self.exists:
            return []
        out: list[Json] = [{"table": {"family": n.FAMILY, "name": n.TABLE}}]
        out += [{kind: dict(o.body)} for (kind, _), o in self.objs.items()]
        out += [{"rule": r} for rules in self.rules.values() for _, r in rules]
        return out

    def static(self) -> tuple[dict[tuple[str, str], tuple[Json, list[Any]]], dict[str, list[Json]]]:
        """Definitions, elements (none for the dynamic sets) and rules: what the policy decides.
        The `dynamic` flag is the kernel's, not the policy's: a meter set keeps it after the
        rules that updated it are gone (reconcile compares sets without it too)."""
        text = repr(self.rules)  # a stale ct timeout object stays in the kernel, unused
        objs = {
            key: (_undynamic(o.body), [] if key[1] in n.DYNAMIC_SET_NAMES else o.elems)
            for key, o in self.objs.items()
            if key[0] != "ct timeout" or repr(key[1]) in text
        }
        return objs, {c: [r for _, r in rules] for c, rules in self.rules.items()}

    # --- one command ------------------------------------------------------------------------

    def _one(self, command: Json) -> None:
        ((verb, obj),) = command.items()
        ((kind, body),) = obj.items()
        if kind == "table":
            if verb == "add":
                self.exists = True
                return
            raise Refused(f"{verb} table is not modelled")
        if not self.exists:
            raise Refused(f"{verb} {kind}: no such table")
        if verb == "add":
            self._add(kind, body)
        elif verb == "flush":
            self._flush(kind, body["name"])
        elif verb == "delete":
            self._delete(kind, body["name"])
        else:
            raise Refused(f"unknown verb {verb}")

    def _add(self, kind: str, body: Json) -> None:
        if kind == "rule":
            self._add_rule(body)
            return
        if kind == "element":
            target = self._named_set(body["name"])
            target.elems.extend(body["elem"])
            return
        if kind not in NAMED:
            raise Refused(f"add {kind} is not modelled")
        name = body["name"]
        definition = {k: v for k, v in body.items() if k != "elem"}
        have = self.objs.get((kind, name))
        if have is None:
            have = self.objs[kind, name] = Obj(definition, [], next(self._ids))
            if kind == "chain":
                self.rules[name] = []
        elif kind in ("set", "map") and have.body != definition:
            raise Refused(f"add {kind} {name}: exists with another definition")
        have.elems.extend(body.get("elem", []))

    def _add_rule(self, body: Json) -> None:
        chain = body["chain"]
        if ("chain", chain) not in self.objs:
            raise Refused(f"add rule: no such chain {chain}")
        for kind, name in _references(body["expr"]):
            if kind == "set":
                self._named_set(name)
            elif (kind, name) not in self.objs:
                raise Refused(f"add rule to {chain}: no such {kind} {name}")
        for name in _updated_sets(body["expr"]):
            s = self.objs["set", name]  # the kernel marks a set that rules update `dynamic`
            s.body = {**s.body, "flags": sorted({*s.body.get("flags", []), "dynamic"})}
        self.rules[chain].append((next(self._ids), body))

    def _named_set(self, name: str) -> Obj:
        for kind in ("set", "map"):
            if (kind, name) in self.objs:
                return self.objs[kind, name]
        raise Refused(f"no such set or map {name}")

    def _flush(self, kind: str, name: str) -> None:
        if kind == "chain":
            if name not in self.rules:
                raise Refused(f"flush chain: no such chain {name}")
            self.rules[name] = []
        else:
            self._named_set(name).elems.clear()

    def _delete(self, kind: str, name: str) -> None:
        if (kind, name) not in self.objs:
            raise Refused(f"delete {kind}: no such {kind} {name}")
        if kind == "chain" and self.rules[name]:
            raise Refused(f"delete chain {name}: it still has rules")
        used = {ref for rules in self.rules.values() for _, r in rules for ref in _references(r)}
        used |= {
            ref for (k, _), o in self.objs.items() if k == "map" for ref in _references(o.elems)
        }
        wanted = ("set", name) if kind in ("set", "map") else (kind, name)
        if wanted in used:
            raise Refused(f"delete {kind} {name}: still referenced")
        del self.objs[kind, name]
        if kind == "chain":
            del self.rules[name]


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _references(value: Any) -> set[tuple[str, str]]:
    """(kind, name) of every named object a rule (or a map's elements) points at; sets and
    maps both count as "set" (`@name`)."""
    out: set[tuple[str, str]] = set()
    for v in _walk(value):
        if isinstance(v, str) and v.startswith("@"):
            out.add(("set", v[1:]))
        elif isinstance(v, dict):
            if isinstance(v.get("counter"), str):
                out.add(("counter", v["counter"]))
            for verb in ("goto", "jump"):
                if isinstance(v.get(verb), dict):
                    out.add(("chain", v[verb]["target"]))
    return out


def _updated_sets(exprs: list[Json]) -> set[str]:
    return {
        v["set"]["set"][1:]
        for v in _walk(exprs)
        if isinstance(v, dict)
        and isinstance(v.get("set"), dict)
        and v["set"].get("op") in ("add", "update")
    }


def _undynamic(body: Json) -> Json:
    flags = body.get("flags")
    if not isinstance(flags, list) or "dynamic" not in flags:
        return body
    rest = [f for f in flags if f != "dynamic"]
    return {**{k: v for k, v in body.items() if k != "flags"}, **({"flags": rest} if rest else {})}
