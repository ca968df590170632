"""Request bodies as JSON, read defensively (layer L1, pure).

Owns: `decode` — UTF-8, nesting bounded before parsing (no deep recursion anywhere), no
key twice in one object (a located E-JSON: JSON says nothing of which one would win). The
typed requests made of the result are control/schema.py's.

How a repeated key is found cheaply: the body's structure (its brackets and colons, strings
taken out: a few C passes) counts its key-value pairs; the parser's objects, counted as
they are made, hold as many pairs unless a key came twice. Only then does the body go
through the parser again with a hook that sees every pair (which names the key). The hook
on every object cost a 100,000-item request 30 ms; the count costs 10.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aitherfwd.errors import RequestError

MAX_DEPTH = 32  # JSON nesting; our bodies need 3
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def decode(body: bytes) -> Any:
    """The JSON of a request body: UTF-8, nested at most MAX_DEPTH deep, no key twice in an
    object (a located E-JSON otherwise: JSON says nothing of which one would win)."""
    if not body:
        return {}
    structure = _structure(body)
    _check_depth(structure)
    pairs = [0]

    def counted(obj: dict[str, Any]) -> dict[str, Any]:
        pairs[0] += len(obj)
        return obj

    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_hook=counted)
        if pairs[0] != structure.count(b":"):  # a key came twice: which one
            json.loads(text, object_pairs_hook=_no_duplicates)
        return value
    except _DuplicateKey as exc:
        line, col = _where_key(text, exc.key)
        raise RequestError(
            f"the body is not valid JSON: line {line} column {col}: "
            f"key {json.dumps(exc.key)[:64]} is given twice in one object",
            code="E-JSON",
        ) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"the body is not valid JSON: {exc}", code="E-JSON") from None


def _structure(body: bytes) -> bytes:
    """The body's brackets and colons outside strings (escapes out, then all but quotes,
    brackets and colons, then the strings: a few C passes). Two quotes side by side with
    nothing kept between them never enclose a bracket or colon outside a string: they go
    first, so the pattern is left only the few strings that hold one."""
    plain = _ESCAPE.sub(b"", body) if b"\\" in body else body
    quoted = plain.translate(None, delete=_NOT_STRUCTURE).replace(b'""', b"")
    return _STRING.sub(b"", quoted) if b'"' in quoted else quoted


def _check_depth(structure: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH before parsing (no deep recursion anywhere):
    each pass over the structure's brackets removes the innermost `[]`/`{}` pairs, one
    level."""
    brackets = structure.replace(b":", b"")
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return  # cannot be deeper than the brackets it opens
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"\0").replace(b"{}", b"\0").replace(b"\0", b"")
    if brackets:
        raise RequestError(
            f"the body is not valid JSON: nested deeper than {MAX_DEPTH} levels "
            "(or unbalanced brackets)",
            code="E-JSON",
        )


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}:')


def _where_key(text: str, key: str) -> tuple[int, int]:
    """Line and column of the second occurrence of `key` as a key in the same object (the
    first repeated key as a key anywhere, if objects cannot be told apart cheaply)."""
    stack: list[set[str]] = [set()]
    pos = 0
    for match in re.finditer(r'[{}\[\]]|"(?:[^"\\]|\\.)*"(?=\s*:)', text):
        found = match.group()
        if found in "{[":
            stack.append(set())
        elif found in "}]":
            stack.pop() if len(stack) > 1 else None
        elif json.loads(found) == key:
            if key in stack[-1]:
                pos = match.start()
                break
            stack[-1].add(key)
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1
