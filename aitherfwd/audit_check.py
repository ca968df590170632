"""Checking written audit lines against the record schema of aitherfwd/audit_records.py
(layer L1, pure).

Owns: `validate_line(obj)`, the problems of one parsed JSONL line (timestamp, a known
event, its action, the record's keys in order and the types of their values, and the OCSF
attributes, recomputed from the fields and compared). Tests and
tools use it on whole audit files.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Union

from aitherfwd import audit_ocsf as ocsf
from aitherfwd.audit_records import BY_EVENT, HEADER, AuditRecord, ocsf_of


def _type_problems(value: object, hint: object, where: str) -> list[str]:
    """Does a parsed JSON value fit a field's type? (tuples are JSON lists, Mappings
    objects, an int fits a float, a bool fits no int.)"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is object or (hint is type(None) and value is None):
        return []
    if hint is type(None):
        return [f"{where}: expected null, got {value!r:.60}"]
    if origin in (Union, types.UnionType):
        found = [_type_problems(value, a, where) for a in args]
        return [] if any(not p for p in found) else [f"{where}: {value!r:.60} fits no {hint}"]
    if origin in (tuple, Mapping):
        item = args[0] if origin is tuple else args[1]  # tuple[X, ...], Mapping[K, X]
        return _container_problems(value, origin, item, where)
    return _scalar_problems(value, hint, where)


def _container_problems(value: object, origin: object, item: object, where: str) -> list[str]:
    if origin is tuple:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r:.60}"]
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {value!r:.60}"]
        items = [(f"{where}.{k}", v) for k, v in value.items()]
    out: list[str] = []
    for at, v in items:
        out += _type_problems(v, item, at)
    return out


SCALARS: dict[object, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
}


def _scalar_problems(value: object, hint: object, where: str) -> list[str]:
    wanted = SCALARS.get(hint)
    if wanted is None:
        return [f"{where}: no check for type {hint}"]
    if isinstance(value, wanted) and (hint is bool or not isinstance(value, bool)):
        return []
    return [f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r:.60}"]


def _problems_as(cls: type[AuditRecord], obj: Mapping[str, object]) -> list[str]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    out: list[str] = []
    if obj.get("action") != cls.action:
        out.append(f"action: expected {cls.action!r}, got {obj.get('action')!r:.60}")
    own_ocsf = _ocsf_keys(cls, obj)
    keys = [k for k in obj if k not in HEADER and k not in own_ocsf]
    missing = [n for n in names if n not in obj]
    extra = [k for k in keys if k not in names]
    if missing:
        out.append(f"{cls.event}: missing {', '.join(missing)}")
    if extra:
        out.append(f"{cls.event}: unexpected {', '.join(extra)}")
    if not missing and not extra and keys != names:
        out.append(f"{cls.event}: fields out of order: {', '.join(keys)}")
    for n in names:
        if n in obj:
            out += _type_problems(obj[n], hints[n], n)
    return out + _ocsf_problems(cls, obj)


def _ocsf_keys(cls: type[AuditRecord], obj: Mapping[str, object]) -> frozenset[str]:
    """The OCSF attributes a line of `cls` carries: those its class adds (`actor` is one
    for a tool-call decision and a record field elsewhere), and any other OCSF name."""
    try:
        own = ocsf_of(cls, obj, 0)
    except (KeyError, ValueError):
        own = {}
    return (ocsf.ALL_KEYS | own.keys()) - {f.name for f in fields(cls)}


def _ocsf_problems(cls: type[AuditRecord], obj: Mapping[str, object]) -> list[str]:
    """The OCSF attributes must be exactly those the record's fields give."""
    try:
        want = ocsf_of(cls, obj, ocsf.epoch_ms(str(obj.get("timestamp"))))
    except (KeyError, ValueError) as exc:
        return [f"ocsf: cannot compute from this line ({exc})"]
    keys = _ocsf_keys(cls, obj)
    have = {k: v for k, v in obj.items() if k in keys}
    if have == want and [k for k in obj if k in keys] == list(want):
        return []
    wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    return [f"ocsf: {', '.join(wrong) or 'order'} differ from what the fields give"]


def validate_line(obj: Mapping[str, object]) -> list[str]:
    """The problems of one parsed audit line against the schema; [] when it is valid. When
    several record types share the event, the line is valid if it fits one of them (the
    problems reported are those of the closest)."""
    out: list[str] = []
    ts = obj.get("timestamp")
    if not isinstance(ts, str) or not ts.endswith("Z"):
        out.append(f"timestamp: expected RFC 3339 UTC text, got {ts!r:.60}")
    else:
        try:
            datetime.fromisoformat(ts.removesuffix("Z") + "+00:00")
        except ValueError:
            out.append(f"timestamp: not RFC 3339: {ts!r:.60}")
    event = obj.get("event")
    candidates = BY_EVENT.get(event, ()) if isinstance(event, str) else ()
    if not candidates:
        return [*out, f"event: unknown {event!r:.60}"]
    found = sorted((_problems_as(c, obj) for c in candidates), key=len)
    return out + found[0]
