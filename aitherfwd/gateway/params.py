"""The parameters of a tool call, walked once (layer L1, pure).

Owns: flattening a call's `params` — nested objects and lists, numbers, booleans — into
its string leaves with their dotted names (bounded in depth and count: a hostile call
cannot make the walk expensive), the argument checks (length in UTF-8 bytes, blocked
words case-folded and NFKC-normalised in the raw and the percent-decoded text, blocked
regexes) and which leaves hold paths. The seed accepted only flat string parameters
(anything else was a 400) and checked only one named `path`.
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from aitherfwd.gateway.model import ToolEntry

MAX_DEPTH = 16
MAX_LEAVES = 4096
# parameter names that hold paths, whatever their value looks like
PATH_WORDS = ("path", "file", "dir", "folder", "dest", "src", "source", "target", "cwd")


class ParamsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Leaf:
    name: str  # dotted: `path`, `files.0`, `opts.dest`
    key: str  # the last mapping key on the way (`dest` for `opts.dest`, `files` for `files.0`)
    value: str
    is_key: bool = False  # a mapping key itself (checked as an argument, never as a path)


def leaves(params: object) -> list[Leaf]:
    """Every scalar in `params` as a string leaf; raises ParamsError when it is not a
    mapping, or deeper or larger than the bounds."""
    if not isinstance(params, dict):
        raise ParamsError("params must be an object")
    out: list[Leaf] = []
    for leaf in _walk(params, "", "", 0):
        out.append(leaf)
        if len(out) > MAX_LEAVES:
            raise ParamsError(f"params hold more than {MAX_LEAVES} values")
    return out


def _walk(value: object, name: str, key: str, depth: int) -> Iterator[Leaf]:
    if depth > MAX_DEPTH:
        raise ParamsError(f"params are nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            yield Leaf(f"{name}.{k}" if name else str(k), str(k), str(k), is_key=True)
            yield from _walk(v, f"{name}.{k}" if name else str(k), str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{name}.{i}", key, depth + 1)
    elif value is None:
        return
    elif isinstance(value, bool):
        yield Leaf(name, key, "true" if value else "false")
    else:
        yield Leaf(name, key, str(value))


def folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def check_args(entry: ToolEntry, items: list[Leaf]) -> str | None:
    """The reason the arguments are refused, or None (the seed's wording). Blocked words
    are folded once by the parser; a value is folded once, and decoded only when it holds
    a `%`."""
    words, regexes = entry.args_blocklist, entry.args_blocklist_regex
    for leaf in items:
        value = leaf.value
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        if size > entry.max_arg_length:
            return f'argument "{leaf.name}" exceeds max length ({size} > {entry.max_arg_length})'
        if not (words or regexes):
            continue
        forms = [folded(value)]
        if "%" in value:
            forms.append(folded(urllib.parse.unquote(value)))
        for word in words:
            for form in forms:
                if word in form:
                    return f'argument "{leaf.name}" contains blocked pattern "{word}"'
        for rx in regexes:
            if any(rx.search(form) for form in forms):
                return f'argument "{leaf.name}" matches blocked pattern /{rx.pattern}/'
    return None


def path_leaves(entry: ToolEntry, items: list[Leaf]) -> list[Leaf]:
    """The leaves the path checks apply to: those named in `path_params` when the entry
    names them; else every value under a path-like name or that looks like a path."""
    values = [leaf for leaf in items if not leaf.is_key]
    if entry.path_params is not None:
        wanted = set(entry.path_params)
        return [leaf for leaf in values if leaf.key in wanted or leaf.name in wanted]
    return [leaf for leaf in values if _pathlike(leaf)]


def _pathlike(leaf: Leaf) -> bool:
    key = leaf.key.casefold()
    if any(word in key for word in PATH_WORDS):
        return True
    v = leaf.value
    return v.startswith(("/", "~", ".", "%2f", "%2F", "file:")) or "/" in v or "\\" in v
