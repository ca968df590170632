"""Request bodies as JSON, read defensively (layer L1, pure).

Owns: `decode` — UTF-8, nesting bounded before parsing (no deep recursion anywhere), no
key twice in one object (a located E-JSON: JSON says nothing of which one would win). The
typed requests made of the result are control/schema.py's.
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
    _check_depth(body)
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        line, col = _where_key(text, exc.key)
        raise RequestError(
            f"the body is not valid JSON: line {line} column {col}: "
            f"key {json.dumps(exc.key)[:64]} is given twice in one object",
            code="E-JSON",
        ) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"the body is not valid JSON: {exc}", code="E-JSON") from None


def _check_depth(body: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH before parsing (no deep recursion anywhere):
    with strings taken out, each pass removes the innermost `[]`/`{}` pairs, one level."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return  # cannot be deeper than the brackets it has
    # escapes out, then all but quotes and brackets, then strings: a few C passes
    plain = _ESCAPE.sub(b"", body) if b"\\" in body else body
    # (two quotes side by side with nothing kept between them never enclose a bracket)
    quoted = plain.translate(None, delete=_NOT_STRUCTURE).replace(b'""', b"")
    brackets = _STRING.sub(b"", quoted) if b'"' in quoted else quoted
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


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')


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
