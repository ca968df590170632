"""Typed readers for YAML nodes that report located errors instead of raising (layer L1).

Owns: mapping schemas (unknown and missing keys with did-you-mean), scalars, enums, lists,
CIDRs and ports. Used by `parse`; knows nothing about what the policy means.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from aitherfwd.policy.diagnostics import Reporter, did_you_mean
from aitherfwd.policy.model import IPNetwork, PortRange
from aitherfwd.policy.source import YNode

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
NAME_RULE = "1-63 characters of letters, digits, '_', '.', '-', not starting with '.' or '-'"


class Section:
    """The optional keys of one mapping, read one by one: `get` gives the default for an
    absent key, and `ok` stays True only while every present key read cleanly (each reader
    reports its own diagnostics and returns None on error)."""

    def __init__(self, mapping: dict[str, YNode], prefix: str) -> None:
        self.mapping, self.prefix, self.ok = mapping, prefix, True

    def get(self, key: str, read: Callable[[YNode, str], object], default: object) -> Any:
        if key not in self.mapping:
            return default
        value = read(self.mapping[key], f"{self.prefix}.{key}")
        self.ok = self.ok and value is not None
        return value


class Fields:
    """Reads values out of located nodes; every problem goes to the reporter."""

    def __init__(self, report: Reporter) -> None:
        self.report = report

    def mapping(
        self, node: YNode, path: str, keys: set[str], required: frozenset[str] = frozenset()
    ) -> dict[str, YNode] | None:
        if not node.is_map:
            self.report.error("E-TYPE", path, f"expected a mapping, got {_kind(node)}", node.pos)
            return None
        out: dict[str, YNode] = node.value
        for key, child in out.items():
            if key not in keys:
                self.report.error(
                    "E-UNKNOWN-KEY",
                    _join(path, key),
                    f"unknown key '{key}'{did_you_mean(key, keys)}",
                    child.key_pos or child.pos,
                )
        for key in sorted(required - out.keys()):
            self.report.error(
                "E-MISSING-KEY", _join(path, key), f"required key '{key}' is missing", node.pos
            )
        return out

    def string(self, node: YNode, path: str) -> str | None:
        if node.is_map or node.is_list or node.value is None:
            self.report.error("E-TYPE", path, f"expected a string, got {_kind(node)}", node.pos)
            return None
        # Plain scalars keep their text: `no` stays "no", `18:00` stays "18:00".
        return str(node.value) if isinstance(node.value, str) else str(node.raw)

    def name(self, node: YNode, path: str) -> str | None:
        text = self.string(node, path)
        if text is not None and not NAME_RE.match(text):
            self.report.error(
                "E-NAME", path, f"'{text}' is not a valid name: use {NAME_RULE}", node.pos
            )
            return None
        return text

    def boolean(self, node: YNode, path: str) -> bool | None:
        if isinstance(node.value, bool):
            return node.value
        self.report.error("E-TYPE", path, f"expected true or false, got {_kind(node)}", node.pos)
        return None

    def integer(self, node: YNode, path: str, lo: int, hi: int) -> int | None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            self.report.error(
                "E-TYPE", path, f"expected a whole number, got {_kind(node)}", node.pos
            )
            return None
        if not lo <= value <= hi:
            self.report.error("E-RANGE", path, f"{value} is out of range {lo}-{hi}", node.pos)
            return None
        return value

    def enum(self, node: YNode, path: str, kind: type[E]) -> E | None:
        text = self.string(node, path)
        if text is None:
            return None
        try:
            return kind(text.lower())
        except ValueError:
            choices = [str(m.value) for m in kind]
            self.report.error(
                "E-ENUM",
                path,
                f"'{text}' is not one of {', '.join(choices)}{did_you_mean(text, choices)}",
                node.pos,
            )
            return None

    def items(self, node: YNode, path: str, *, scalar_ok: bool = False) -> list[YNode] | None:
        """A list; with `scalar_ok`, a single scalar stands for a one-element list."""
        if node.is_list:
            return list(node.value)
        if scalar_ok and not node.is_map and node.value is not None:
            return [node]
        self.report.error("E-TYPE", path, f"expected a list, got {_kind(node)}", node.pos)
        return None

    def each(
        self,
        node: YNode,
        path: str,
        read: Callable[[YNode, str], T | None],
        *,
        scalar_ok: bool = False,
    ) -> list[T] | None:
        nodes = self.items(node, path, scalar_ok=scalar_ok)
        if nodes is None:
            return None
        values = [read(n, f"{path}[{i}]") for i, n in enumerate(nodes)]
        if any(v is None for v in values):
            return None
        return [v for v in values if v is not None]

    def port(self, node: YNode, path: str) -> PortRange | None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | str):
            self.report.error(
                "E-TYPE",
                path,
                f'expected a port or a range like "8000-8100", got {_kind(node)}',
                node.pos,
            )
            return None
        try:
            return PortRange.parse(node.value)
        except ValueError as exc:
            self.report.error("E-PORT-RANGE", path, str(exc), node.pos)
            return None

    def cidr(self, node: YNode, path: str) -> IPNetwork | None:
        text = self.string(node, path)
        if text is None:
            return None
        try:
            return parse_cidr(text)
        except ValueError as exc:
            self.report.error("E-CIDR", path, str(exc), node.pos)
            return None


def parse_cidr(text: str) -> IPNetwork:
    """An address or prefix; `::ffff:a.b.c.d` becomes IPv4. Raises ValueError with a fix."""
    if "%" in text:
        raise ValueError(f"'{text}': zone ids (%...) are not allowed in addresses")
    _, slash, length = text.strip().partition("/")
    if slash and not (length.isascii() and length.isdigit() and str(int(length)) == length):
        raise ValueError(f"'{text}': the prefix length must be plain digits without a leading zero")
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"'{text}' is not an IP address or CIDR ({exc})") from None
        raise ValueError(f"'{text}' has host bits set; did you mean {loose}?") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: YNode) -> str:
    if node.is_map:
        return "a mapping"
    if node.is_list:
        return "a list"
    if node.value is None:
        return "nothing (null)"
    if isinstance(node.value, bool):
        return f"a boolean ({node.raw})"
    if isinstance(node.value, int | float):
        return f"a number ({node.raw})"
    return f"'{node.raw}'"
