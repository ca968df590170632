"""YAML text to a tree of located nodes (layer L1, pure).

Owns: `YNode` (a value plus the position it was written at), duplicate-key and alias-bomb
detection, and the bounds checked BEFORE composing: the text's size and its nesting depth.
libyaml's C composer recurses once per level and segfaults at `[` x 100,000 (a 200 KB
file); Python's composer raises RecursionError at ~1,000 levels. The depth pass walks the
parser's events (libyaml's parser keeps an explicit stack, it does not recurse) and stops
at the first collection deeper than MAX_DEPTH, so it costs microseconds on a hostile file
and a fraction of the composition on a valid one. PyYAML's composer gives us positions;
we keep each plain scalar's text as written, because YAML 1.1 turns `18:00` into the
integer 1080 and `no` into False. Must not import adapters or read files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from aitherfwd.policy.diagnostics import Pos, Reporter

# libyaml's C composer when available: about 10x faster on large policies.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_NODES = 100_000  # nodes reached again through aliases: bounds "billion laughs"
MAX_DEPTH = 64  # nested collections (block or flow); a real policy needs about 6
MAX_TEXT = 4 << 20  # characters; the file reader refuses larger files before reading them
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


@dataclass(frozen=True, slots=True)
class YNode:
    """A YAML value with its position. `value` is dict[str, YNode], list[YNode] or a scalar."""

    value: Any
    pos: Pos
    raw: str | None = None  # the scalar's text as written (None for collections)
    quoted: bool = False
    key_pos: Pos | None = None  # for mapping values: where their key was written

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.value, list)


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_NODES
        self.seen: set[int] = set()


def parse_yaml(text: str, filename: str, report: Reporter) -> YNode | None:
    """Compose `text`; on a syntax error, or text too large or too deeply nested to
    compose safely, report it with its position and return None."""
    try:
        return _compose(text, filename, report)
    except _Refused as exc:
        report.error("E-YAML", "", exc.message, exc.pos or Pos(filename, 1, 1))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(filename, mark.line + 1, mark.column + 1) if mark else Pos(filename, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        report.error("E-YAML", "", f"{problem}; fix the YAML syntax here", pos)
    except yaml.YAMLError as exc:
        report.error("E-YAML", "", f"malformed YAML: {exc}", Pos(filename, 1, 1))
    except RecursionError:  # the depth pass makes this unreachable; never a traceback
        msg = "collections nested too deeply to compose; flatten them"
        report.error("E-YAML", "", msg, Pos(filename, 1, 1))
    return None


class _Refused(Exception):
    def __init__(self, message: str, pos: Pos | None = None) -> None:
        super().__init__(message)
        self.message, self.pos = message, pos


def _compose(text: str, filename: str, report: Reporter) -> YNode:
    """Size, then depth (from the parser's events), and only then the composer."""
    if len(text) > MAX_TEXT:
        raise _Refused(
            f"the text is longer than {MAX_TEXT} characters; split it or remove what is not policy"
        )
    deep = _too_deep(text)
    if deep is not None:
        raise _Refused(
            f"collections nested deeper than {MAX_DEPTH} levels; a policy needs a handful, "
            "flatten this",
            Pos(filename, deep[0] + 1, deep[1] + 1),
        )
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YNode({}, Pos(filename, 1, 1))
        return _convert(loader, node, filename, report, _Budget())
    finally:
        loader.dispose()


def _too_deep(text: str) -> tuple[int, int] | None:
    """Where (line, column; 0-based) the first collection deeper than MAX_DEPTH starts,
    from the parser's events (libyaml's parser keeps an explicit stack: it does not
    recurse, and this stops after MAX_DEPTH + 1 openings); None when the text is shallow
    enough. YAML errors propagate, located."""
    events = _Loader(text)
    try:
        depth = 0
        while (event := events.get_event()) is not None:
            if isinstance(event, _OPEN):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    return (mark.line, mark.column) if mark is not None else (0, 0)
            elif isinstance(event, _CLOSE):
                depth -= 1
            elif isinstance(event, yaml.StreamEndEvent):
                return None
        return None
    finally:
        events.dispose()


class _TooLarge(_Refused):
    def __init__(self) -> None:
        super().__init__(
            f"aliases expand to more than {MAX_NODES} nodes; "
            "write the values out instead of nesting aliases"
        )


def _pos(filename: str, node: yaml.Node) -> Pos:
    return Pos(filename, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(
    loader: Any, node: yaml.Node, filename: str, report: Reporter, budget: _Budget
) -> YNode:
    if id(node) in budget.seen:  # reached again through an alias
        budget.left -= 1
        if budget.left < 0:
            raise _TooLarge
    else:
        budget.seen.add(id(node))
    pos = _pos(filename, node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, YNode] = {}
        for key_node, value_node in node.value:
            key_pos = _pos(filename, key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                report.error("E-TYPE", "", "mapping keys must be plain strings", key_pos)
                continue
            key = str(key_node.value)
            if key in out:
                report.error(
                    "E-DUPLICATE-KEY",
                    "",
                    f"key '{key}' appears twice in this mapping; remove one",
                    key_pos,
                )
                continue
            child = _convert(loader, value_node, filename, report, budget)
            out[key] = YNode(child.value, child.pos, child.raw, child.quoted, key_pos)
        return YNode(out, pos)
    if isinstance(node, yaml.SequenceNode):
        return YNode([_convert(loader, n, filename, report, budget) for n in node.value], pos)
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.YAMLError(f"unsupported YAML node {type(node).__name__}")
    value = loader.construct_object(node, deep=True)
    return YNode(value, pos, raw=str(node.value), quoted=node.style in ("'", '"'))


def position_of(root: YNode | None, *path: str | int) -> Pos | None:
    """The position of a node reached by keys and indexes, for diagnostics after parsing."""
    node = root
    for step in path:
        if node is None:
            return None
        by_index = isinstance(step, int) and node.is_list and step < len(node.value)
        by_key = isinstance(step, str) and node.is_map and step in node.value
        if by_index or by_key:
            node = node.value[step]
        else:
            return node.pos
    return node.pos if node else None
