"""YAML text to a tree of located nodes (layer L1, pure).

Owns: `YNode` (a value plus the position it was written at), duplicate-key and alias-bomb
detection. PyYAML's composer gives us positions; we keep each plain scalar's text as
written, because YAML 1.1 turns `18:00` into the integer 1080 and `no` into False.
Must not import adapters or read files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from aitherfwd.policy.diagnostics import Pos, Reporter

# libyaml's C composer when available: about 10x faster on large policies.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_NODES = 100_000  # nodes reached again through aliases: bounds "billion laughs"


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
    """Compose `text`; on a syntax error report it with its position and return None."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YNode({}, Pos(filename, 1, 1))
        return _convert(loader, node, filename, report, _Budget())
    except _TooLarge:
        report.error(
            "E-YAML",
            "",
            f"aliases expand to more than {MAX_NODES} nodes; "
            "write the values out instead of nesting aliases",
            Pos(filename, 1, 1),
        )
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(filename, mark.line + 1, mark.column + 1) if mark else Pos(filename, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        report.error("E-YAML", "", f"{problem}; fix the YAML syntax here", pos)
        return None
    except yaml.YAMLError as exc:
        report.error("E-YAML", "", f"malformed YAML: {exc}", Pos(filename, 1, 1))
        return None
    finally:
        loader.dispose()


class _TooLarge(Exception):
    pass


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
