"""Typed builders for libnftables JSON objects and expressions (layer L1, pure).

Owns: the JSON shapes libnftables accepts (schema version 1), so no other module spells
them out. Must not import the nftables binding: building is pure, applying is an adapter's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aitherfwd.nft.names import FAMILY, TABLE

Json = dict[str, Any]
Expr = Json


def _t() -> Json:
    return {"family": FAMILY, "table": TABLE}


# --- objects -------------------------------------------------------------------------------


def table() -> Json:
    return {"table": {"family": FAMILY, "name": TABLE}}


def chain(name: str, *, hook: str | None = None, prio: int = 0, policy: str = "accept") -> Json:
    body: Json = {**_t(), "name": name}
    if hook is not None:
        body.update({"type": "filter", "hook": hook, "prio": prio, "policy": policy})
    return {"chain": body}


def counter(name: str) -> Json:
    return {"counter": {**_t(), "name": name}}


def set_(
    name: str,
    type_: str | list[str],
    flags: list[str],
    *,
    elements: list[Any] | None = None,
    timeout: int | None = None,
    size: int | None = None,
) -> Json:
    body: Json = {**_t(), "name": name, "type": type_}
    if flags:
        body["flags"] = flags
    if timeout is not None:
        body["timeout"] = timeout
    if size is not None:
        body["size"] = size
    if elements:
        body["elem"] = elements
    return {"set": body}


def vmap_(name: str, type_: str | list[str], elements: list[Any]) -> Json:
    body: Json = {**_t(), "name": name, "type": type_, "map": "verdict", "flags": ["interval"]}
    if elements:
        body["elem"] = elements
    return {"map": body}


def rule(chain_name: str, exprs: list[Expr], comment: str) -> Json:
    return {"rule": {**_t(), "chain": chain_name, "expr": exprs, "comment": comment}}


def element(set_name: str, elements: list[Any]) -> Json:
    return {"element": {**_t(), "name": set_name, "elem": elements}}


# --- reading commands and listed elements back (the only place that indexes their JSON) -----


@dataclass(frozen=True, slots=True)
class ElementCommand:
    """An element command as data: `verb` (add, delete, …), the set and its elements."""

    verb: str
    set_name: str
    elements: Sequence[Any]  # a list, or a lazy sequence (geo/elements.py)


def element_count(commands: list[Json]) -> int:
    """How many set elements `commands` add or delete."""
    return sum(len(ec.elements) for c in commands if (ec := element_command(c)))


def element_command(command: Json) -> ElementCommand | None:
    """`command` read back as an element command; None for anything else."""
    ((verb, body),) = command.items()
    elem = body.get("element") if isinstance(body, dict) else None
    if not isinstance(elem, dict):
        return None
    items = elem.get("elem")
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):  # lists, or lazy
        return None  # sequences of elements (geo/elements.py)
    return ElementCommand(verb, str(elem["name"]), items)


def added_set_name(command: Json) -> str | None:
    """The set an `add set` command creates, else None."""
    body = command.get("add", {}).get("set")
    return str(body["name"]) if isinstance(body, dict) else None


def element_fields(element: Any) -> Json:
    """An element as added or listed, as `{"val": …, "timeout"?, "expires"?, "comment"?}`
    (a bare value has only `val`)."""
    if isinstance(element, dict) and "elem" in element:
        fields: Json = element["elem"]
        return fields
    return {"val": element}


def element_value(element: Any) -> Any:
    """What identifies an element in its set: its value, without timeout or comment."""
    return element_fields(element)["val"]


def element_key(element: Any) -> str:
    """`element_value` as text, comparable between what we add and what the kernel lists."""
    return json.dumps(element_value(element), sort_keys=True)


def element_batches(commands: list[Json], limit: int) -> list[list[Json]]:
    """`commands` regrouped, in order, into batches of at most `limit` set elements each
    (an element command is split where a batch fills; other commands count as none).
    libnftables' JSON input slows down superlinearly with the size of one call: 1,000,000
    elements take twice as long in one call as in ten calls of 100,000."""
    batches: list[list[Json]] = [[]]
    room = limit
    for command in commands:
        ((verb, body),) = command.items()
        elem = body.get("element") if isinstance(body, dict) else None
        items = elem.get("elem") if isinstance(elem, dict) else None
        if not isinstance(elem, dict) or not isinstance(items, list):
            batches[-1].append(command)
            continue
        start = 0
        while start < len(items):
            if room == 0:
                batches.append([])
                room = limit
            piece = items[start : start + room]
            batches[-1].append({verb: {"element": {**elem, "elem": piece}}})
            room -= len(piece)
            start += len(piece)
    return [batch for batch in batches if batch]


# --- values --------------------------------------------------------------------------------


def prefix(addr: str, length: int) -> Json:
    return {"prefix": {"addr": addr, "len": length}}


def range_(lo: Any, hi: Any) -> Json:
    return {"range": [lo, hi]}


def anon_set(values: list[Any]) -> Json | Any:
    """A single value stays a value; more become an anonymous set."""
    return values[0] if len(values) == 1 else {"set": values}


def timed(value: Any, timeout_s: int | None) -> Any:
    """A set element, with a kernel timeout when given (None: no timeout, permanent)."""
    if timeout_s is None:
        return value
    return {"elem": {"val": value, "timeout": timeout_s}}


# --- expressions and statements ------------------------------------------------------------


def payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def ct_original(key: str) -> Expr:
    """`ct original <key>`: the connection's first tuple, as the client sent it (pre-NAT)."""
    return {"ct": {"key": key, "dir": "original"}}


def ct_reply(key: str) -> Expr:
    """`ct reply <key>`: the answer's tuple (after NAT: its source is the DNAT target)."""
    return {"ct": {"key": key, "dir": "reply"}}


def mangle(key: Expr, value: Expr) -> Expr:
    """`<key> set <value>`: write a packet field (payload or meta)."""
    return {"mangle": {"key": key, "value": value}}


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def in_set(left: Expr, set_name: str) -> Expr:
    return match(left, f"@{set_name}")


def named_counter(name: str) -> Expr:
    return {"counter": name}


def vmap_lookup(key: Expr, map_name: str) -> Expr:
    return {"vmap": {"key": key, "data": f"@{map_name}"}}


def limit(rate: int, per: str = "second", burst: int | None = None, over: bool = False) -> Expr:
    body: Json = {"rate": rate, "per": per}
    if burst is not None:
        body["burst"] = burst
    if over:
        body["inv"] = True
    return {"limit": body}


def update_set(set_name: str, key: Expr, stmt: Expr) -> Expr:
    return {"set": {"op": "update", "elem": key, "set": f"@{set_name}", "stmt": [stmt]}}


def add_set(set_name: str, key: Expr, stmt: Expr) -> Expr:
    return {"set": {"op": "add", "elem": key, "set": f"@{set_name}", "stmt": [stmt]}}


def ct_count_over(limit: int) -> Expr:
    return {"ct count": {"val": limit, "inv": True}}


def tcp_syn() -> Expr:
    """`tcp flags & (fin|syn|rst|ack) == syn`: a connection's opening SYN."""
    flags = {"payload": {"protocol": "tcp", "field": "flags"}}
    mask = {"&": [flags, ["fin", "syn", "rst", "ack"]]}
    return {"match": {"op": "==", "left": mask, "right": "syn"}}


def jump(target: str) -> Expr:
    return {"jump": {"target": target}}


def log(prefix_text: str, group: int) -> Expr:
    return {"log": {"prefix": prefix_text, "group": group}}


def accept() -> Expr:
    return {"accept": None}


def drop() -> Expr:
    return {"drop": None}


def goto(target: str) -> Expr:
    return {"goto": {"target": target}}


def reject_tcp_reset() -> Expr:
    return {"reject": {"type": "tcp reset"}}


def reject_icmpx() -> Expr:
    return {"reject": {"type": "icmpx", "expr": "port-unreachable"}}


def ret() -> Expr:
    return {"return": None}


def add(obj: Json) -> Json:
    return {"add": obj}


def batch(commands: list[Json]) -> Json:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}
