"""The fake kernel, shipped for tests (re-exported by aitherfwd.testing).

Owns: `FakeKernel` — our table as the kernel would hold it after libnftables JSON batches
(chains and their rules, sets, maps, counters, set elements with their timeouts, a
generation), every batch recorded, any batch refusable, element-only batches applied in
place with an undo log; it implements the daemon's `Kernel` port. No I/O.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.clock import Clock, FakeClock
from aitherfwd.errors import ApplyError
from aitherfwd.nft.builders import element_fields, element_key
from aitherfwd.reconcile import Observed

QUICK_ELEMENTS = 64  # as the real kernel adapter's (adapters/kernel.py)

Json = dict[str, Any]
_OBJECTS = ("chain", "set", "map", "counter", "ct timeout")


@dataclass
class _Element:
    value: Any
    expires_at: float | None
    comment: str | None = None


@dataclass
class _Table:
    objects: dict[str, dict[str, Json]] = field(default_factory=lambda: {k: {} for k in _OBJECTS})
    rules: dict[str, list[Json]] = field(default_factory=dict)
    elements: dict[str, dict[str, _Element]] = field(default_factory=dict)


class FakeKernel:
    """Implements the `Kernel` port (daemon/ports.py). A batch is applied to a copy and
    swapped in only when every command succeeded: refusals apply nothing, as the kernel's."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or FakeClock()
        self.table: _Table | None = None
        self.batches: list[list[Json]] = []  # every batch run, accepted or refused
        self.quick_batches = 0  # of them, written from the caller's thread (run_quick)
        self.refusals: dict[int, str] = {}  # batch index (0-based, over all batches) -> error
        self.refuse_elements_of: set[str] = set()  # element adds to these sets are refused
        self.gen = 1
        self.generation_readable = True
        self.timeout_updates = True  # an `add` updates a live element's timeout (Linux 6.10+)

    # --- test controls ---------------------------------------------------------------------

    def refuse_next(self, message: str = "Operation not permitted", *, after: int = 0) -> None:
        """Refuse the batch `after` batches from now (0: the next one)."""
        self.refusals[len(self.batches) + after] = message

    def touch(self) -> None:
        """Someone else committed a transaction in the namespace."""
        self.gen += 1

    def elements(self, set_name: str) -> dict[str, float | None]:
        """Live elements of a set: key (JSON of the value) -> expiry (None: no timeout)."""
        if self.table is None:
            return {}
        now = self.clock.now()
        elems = self.table.elements.get(set_name, {})
        return {
            k: e.expires_at for k, e in elems.items() if e.expires_at is None or e.expires_at > now
        }

    def values(self, set_name: str) -> set[Any]:
        """Live element values of a set, as libnftables spells them (address text, prefix
        objects as `a/len` text)."""
        out: set[Any] = set()
        for key in self.elements(set_name):
            v = json.loads(key)
            if isinstance(v, dict) and "prefix" in v:
                v = f"{v['prefix']['addr']}/{v['prefix']['len']}"
            out.add(v if isinstance(v, str | int) else json.dumps(v, sort_keys=True))
        return out

    # --- the Kernel port -------------------------------------------------------------------

    def generation(self) -> int | None:
        return self.gen if self.generation_readable else None

    def updates_timeouts(self) -> bool:
        return self.timeout_updates

    def run_quick(self, commands: list[Json]) -> bool:
        """Like the real kernel: a small batch of element changes only, applied at once."""
        if not commands or len(commands) > QUICK_ELEMENTS:
            return False
        if not all("element" in next(iter(c.values())) for c in commands):
            return False
        self.quick_batches += 1
        self.run(commands)
        return True

    def run(self, commands: list[Json]) -> list[Json]:
        index = len(self.batches)
        self.batches.append(copy.deepcopy(commands))
        if index in self.refusals:
            raise ApplyError(self.refusals.pop(index))
        if self.table is not None and all("element" in next(iter(c.values())) for c in commands):
            return self._run_elements(self.table, commands)
        work = copy.deepcopy(self.table)
        out: list[Json] = []
        for command in commands:
            ((verb, body),) = command.items()
            work = self._one(work, verb, body, out)
        if any(next(iter(c)) != "list" for c in commands):
            self.table = work
            self.gen += 1
        return out

    def _run_elements(self, t: _Table, commands: list[Json]) -> list[Json]:
        """Element changes only: in place with an undo log (cost independent of the size)."""
        undo: list[tuple[dict[str, _Element], str, _Element | None]] = []
        try:
            for command in commands:
                obj = next(iter(command.values()))["element"]
                elems = t.elements.setdefault(obj["name"], {})
                undo += [(elems, k, elems.get(k)) for k in map(element_key, obj["elem"])]
                self._element(t, next(iter(command)), obj)
        except ApplyError:
            for elems, key, old in reversed(undo):
                elems.pop(key, None) if old is None else elems.__setitem__(key, old)
            raise
        self.gen += 1
        return []

    def observe(self) -> Observed:
        t = self.table
        if t is None:
            return Observed(False)
        listing: list[Json] = [{"table": {"name": "aitherfwd"}}]
        for kind in _OBJECTS:
            listing += [{kind: dict(body)} for body in t.objects[kind].values()]
        for chain, rules in t.rules.items():
            listing += [{"rule": {"chain": chain, "comment": r.get("comment", "")}} for r in rules]
        return Observed.from_listing(listing)

    def set_elements(self, set_name: str) -> list[Any]:
        if self.table is None or set_name not in self.table.objects["set"]:
            raise ApplyError(f"Could not process rule: No such file or directory: {set_name}")
        now = self.clock.now()
        out: list[Any] = []
        for e in self.table.elements.get(set_name, {}).values():
            if e.expires_at is None:
                out.append(e.value)
            elif e.expires_at > now:
                remaining = max(1, math.ceil(e.expires_at - now))
                elem = {"val": e.value, "timeout": remaining, "expires": remaining}
                out.append({"elem": elem | ({"comment": e.comment} if e.comment else {})})
        return out

    # --- interpretation ----------------------------------------------------------------------

    def _one(  # noqa: PLR0912 - one branch per libnftables verb and object kind
        self, t: _Table | None, verb: str, body: Json, out: list[Json]
    ) -> _Table | None:
        ((kind, obj),) = body.items()
        if kind == "table":
            if verb in ("add", "create"):
                return t or _Table()
            if verb == "delete":
                if t is None:
                    raise ApplyError("Could not process rule: No such file or directory")
                return None
            return t
        if t is None:
            raise ApplyError(f"Could not process rule: No such file or directory ({kind})")
        if verb == "list":
            out.append({kind: {**obj, "elem": self.set_elements(obj["name"])}})
        elif kind == "element":
            self._element(t, verb, obj)
        elif kind == "rule":
            if obj["chain"] not in t.objects["chain"]:
                raise ApplyError(f"Could not process rule: No such file or directory: {obj}")
            t.rules.setdefault(obj["chain"], []).append(obj)
        elif verb in ("add", "create"):
            self._add_object(t, kind, obj, create=verb == "create")
        elif verb == "flush":
            self._exists(t, kind, obj["name"])
            if kind == "chain":
                t.rules[obj["name"]] = []
            else:
                t.elements[obj["name"]] = {}
        elif verb == "delete":
            self._exists(t, kind, obj["name"])
            del t.objects[kind][obj["name"]]
            t.rules.pop(obj["name"], None) if kind == "chain" else None
            t.elements.pop(obj["name"], None)
        return t

    @staticmethod
    def _exists(t: _Table, kind: str, name: str) -> None:
        if name not in t.objects[kind]:
            raise ApplyError(f"Could not process rule: No such file or directory: {kind} {name}")

    def _add_object(self, t: _Table, kind: str, obj: Json, *, create: bool) -> None:
        name = obj["name"]
        if name in t.objects[kind]:
            if create:
                raise ApplyError(f"Could not process rule: File exists: {kind} {name}")
            return  # `add` of an existing object keeps it (and a set its elements)
        t.objects[kind][name] = {k: v for k, v in obj.items() if k != "elem"}
        if kind in ("set", "map"):
            t.elements[name] = {}
            if obj.get("elem"):
                self._element(t, "add", {"name": name, "elem": obj["elem"]})

    def _element(self, t: _Table, verb: str, obj: Json) -> None:
        name = obj["name"]
        if name not in t.objects["set"] and name not in t.objects["map"]:
            raise ApplyError(f"Could not process rule: No such file or directory: set {name}")
        if verb == "add" and name in self.refuse_elements_of:
            raise ApplyError(f"Could not process rule: Operation not supported: set {name}")
        elems = t.elements.setdefault(name, {})
        now = self.clock.now()
        for e in obj["elem"]:
            key = element_key(e)
            live = elems.get(key)
            if live is not None and live.expires_at is not None and live.expires_at <= now:
                del elems[key]
                live = None
            if verb == "delete":
                if live is None:
                    raise ApplyError("Could not process rule: No such file or directory: element")
                del elems[key]
                continue
            body = element_fields(e)
            timeout = body.get("timeout")
            if live is not None:
                if timeout and live.expires_at is not None and self.timeout_updates:
                    live.expires_at = now + timeout  # Linux 6.10+: the add updates it
                continue  # else `add` of a present element changes nothing
            elems[key] = _Element(
                body["val"], now + timeout if timeout else None, body.get("comment")
            )
