"""A seed-003 tool policy from YAML text, validated with located, coded diagnostics (L1).

Owns: the schema of the tool policy (unknown keys with did-you-mean, types, ranges), glob
and regex compilation, and the cross checks: a tool both allowed and denied
(`E-TOOL-CONFLICT`), a tool allowed twice (`E-DUPLICATE-NAME`). Every problem is reported,
not only the first, exactly like the firewall policy (`aitherfwd check`). Pure: the text is
passed in; `gateway.files` reads it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from aitherfwd.durations import parse_duration
from aitherfwd.gateway.globs import Glob, GlobError, compile_glob
from aitherfwd.gateway.model import (
    DEFAULT_MAX_ARG_LENGTH,
    DEFAULT_REQUESTS_PER_MINUTE,
    Default,
    NetworkSpec,
    ToolEntry,
    ToolPolicy,
    tool_key,
)
from aitherfwd.gateway.params import folded
from aitherfwd.policy.diagnostics import Diagnostic, Reporter
from aitherfwd.policy.fields import Fields, Section
from aitherfwd.policy.source import YNode, parse_yaml

MAX_RPM = 1_000_000
MAX_ARG = 1 << 20
MAX_TOOL_NAME = 256
_TOP = {"version", "tools", "defaults"}
_TOOLS = {"default", "rate_limit", "allow", "deny"}
_RATE = {"requests_per_minute", "burst_size"}
_ENTRY = {
    "name",
    "paths_allowlist",
    "paths_denylist",
    "max_arg_length",
    "args_blocklist",
    "args_blocklist_regex",
    "path_params",
    "rate_limit",
    "network",
}
_NETWORK = {"param", "ports", "ttl"}
# the reference's `defaults:` section (accepted so its policies load; not enforced here)
_DEFAULTS = {"network", "logging"}


@dataclass(frozen=True, slots=True)
class ToolPolicyResult:
    policy: ToolPolicy | None  # None when there are errors
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return self.policy is not None


def looks_like_tool_policy(text: str) -> bool:
    """A cheap guess for `aitherfwd check`: a top-level `tools:` key and no `rules:`."""
    lines = text.splitlines()
    return any(ln.startswith("tools:") for ln in lines) and not any(
        ln.startswith(("rules:", "zones:")) for ln in lines
    )


def parse_tool_policy(text: str, filename: str) -> ToolPolicyResult:
    report = Reporter()
    root = parse_yaml(text, filename, report)
    policy = _Parser(Fields(report)).policy(root) if root is not None else None
    _conflicts(policy, root, report)
    ok = policy is not None and not report.errors
    if ok and policy is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        policy = ToolPolicy(
            policy.version, policy.default, policy.requests_per_minute, policy.allow,
            policy.deny, digest,
        )  # fmt: skip
    return ToolPolicyResult(policy if ok else None, report.sorted())


class _Parser:
    def __init__(self, f: Fields) -> None:
        self.f = f

    def policy(self, root: YNode) -> ToolPolicy | None:
        top = self.f.mapping(root, "", _TOP, frozenset({"tools"}))
        if top is None:
            return None
        s = Section(top, "")
        version = s.get("version", lambda n, p: self.f.integer(n, "version", 1, 1), 1)
        if "defaults" in top:
            self._defaults(top["defaults"])
        tools = self.f.mapping(top["tools"], "tools", _TOOLS) if "tools" in top else None
        if tools is None:
            return None
        t = Section(tools, "tools")
        default = t.get("default", lambda n, p: self.f.enum(n, p, Default), Default.DENY)
        rpm = t.get("rate_limit", self._rate, DEFAULT_REQUESTS_PER_MINUTE)
        allow = t.get("allow", lambda n, p: self.f.each(n, p, self._entry), [])
        deny = t.get("deny", lambda n, p: self.f.each(n, p, self._deny), [])
        if not (s.ok and t.ok):
            return None
        return ToolPolicy(version, default, rpm, tuple(allow), tuple(deny))

    def _defaults(self, node: YNode) -> None:
        m = self.f.mapping(node, "defaults", _DEFAULTS)
        if m and "network" in m:
            self.f.mapping(m["network"], "defaults.network", {"runtime_egress"})
        if m and "logging" in m:
            keys = {"store_raw_prompts", "store_raw_responses"}
            self.f.mapping(m["logging"], "defaults.logging", keys)

    def _rate(self, node: YNode, path: str) -> int | None:
        m = self.f.mapping(node, path, _RATE)
        if m is None:
            return None
        s = Section(m, path)
        # 0 meant "the default" in the seed; burst_size is accepted and unused, as there
        rpm = s.get("requests_per_minute", lambda n, p: self.f.integer(n, p, 0, MAX_RPM), 0)
        s.get("burst_size", lambda n, p: self.f.integer(n, p, 0, MAX_RPM), 0)
        return (rpm or DEFAULT_REQUESTS_PER_MINUTE) if s.ok else None

    def _tool_name(self, node: YNode, path: str) -> str | None:
        name = self.f.string(node, path)
        if name is not None and not (0 < len(tool_key(name)) <= MAX_TOOL_NAME):
            msg = f"a tool name must be 1-{MAX_TOOL_NAME} characters"
            self.f.report.error("E-NAME", path, msg, node.pos)
            return None
        return name

    def _deny(self, node: YNode, path: str) -> str | None:
        m = self.f.mapping(node, path, {"name"}, frozenset({"name"}))
        if m is None or "name" not in m:
            return None
        return self._tool_name(m["name"], f"{path}.name")

    def _entry(self, node: YNode, path: str) -> ToolEntry | None:
        m = self.f.mapping(node, path, _ENTRY, frozenset({"name"}))
        if m is None or "name" not in m:
            return None
        name = self._tool_name(m["name"], f"{path}.name")
        s = Section(m, path)
        globs = lambda n, p: self.f.each(n, p, self._glob)  # noqa: E731
        strings = lambda n, p: self.f.each(n, p, self.f.string)  # noqa: E731
        allow = s.get("paths_allowlist", globs, [])
        deny = s.get("paths_denylist", globs, [])
        # 0 meant "the default" in the seed
        max_len = s.get("max_arg_length", lambda n, p: self.f.integer(n, p, 0, MAX_ARG), 0)
        blocked = s.get("args_blocklist", strings, [])
        regexes = s.get("args_blocklist_regex", lambda n, p: self.f.each(n, p, self._regex), [])
        path_params = s.get("path_params", strings, None)
        rate = s.get("rate_limit", self._tool_rate, None)
        network = s.get("network", self._network, None)
        if name is None or not s.ok:
            return None
        return ToolEntry(
            name=name,
            paths_allowlist=tuple(allow),
            paths_denylist=tuple(deny),
            max_arg_length=max_len or DEFAULT_MAX_ARG_LENGTH,
            args_blocklist=tuple(folded(b) for b in blocked if b),
            args_blocklist_regex=tuple(regexes),
            path_params=tuple(path_params) if path_params is not None else None,
            requests_per_minute=rate,
            network=network,
        )

    def _tool_rate(self, node: YNode, path: str) -> int | None:
        m = self.f.mapping(node, path, {"requests_per_minute"}, frozenset({"requests_per_minute"}))
        if m is None or "requests_per_minute" not in m:
            return None
        return self.f.integer(m["requests_per_minute"], f"{path}.requests_per_minute", 1, MAX_RPM)

    def _network(self, node: YNode, path: str) -> NetworkSpec | None:
        m = self.f.mapping(node, path, _NETWORK, frozenset({"param"}))
        if m is None or "param" not in m:
            return None
        s = Section(m, path)
        param = self.f.string(m["param"], f"{path}.param")
        ports = s.get("ports", lambda n, p: self.f.each(n, p, self._port), [])
        ttl = s.get("ttl", self._ttl, 60)
        if param is None or not s.ok:
            return None
        return NetworkSpec(param, tuple(sorted(set(ports))), ttl)

    def _port(self, node: YNode, path: str) -> int | None:
        return self.f.integer(node, path, 1, 65535)

    def _ttl(self, node: YNode, path: str) -> int | None:
        value: Any = node.value if isinstance(node.value, int) else node.raw or node.value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.f.report.error("E-DURATION", path, str(exc), node.pos)
            return None

    def _glob(self, node: YNode, path: str) -> Glob | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        try:
            return compile_glob(text)
        except GlobError as exc:
            self.f.report.error("E-GLOB", path, str(exc), node.pos)
            return None

    def _regex(self, node: YNode, path: str) -> re.Pattern[str] | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        try:
            return re.compile(text, re.IGNORECASE)
        except re.error as exc:
            self.f.report.error("E-PATTERN", path, f"cannot compile /{text}/: {exc}", node.pos)
            return None


def _names(root: YNode | None, section: str) -> list[tuple[str, YNode]]:
    """(name, its node) of every entry of tools.<section>, as written."""
    if root is None or not root.is_map or "tools" not in root.value:
        return []
    tools = root.value["tools"]
    if not tools.is_map or section not in tools.value or not tools.value[section].is_list:
        return []
    out = []
    for item in tools.value[section].value:
        name = item.value.get("name") if item.is_map else None
        if name is not None and isinstance(name.value, str):
            out.append((name.value, name))
    return out


def _conflicts(policy: ToolPolicy | None, root: YNode | None, report: Reporter) -> None:
    seen: dict[str, str] = {}
    for i, (name, node) in enumerate(_names(root, "allow")):
        key = tool_key(name)
        if key in seen:
            msg = f"tool '{name}' is allowed twice (as '{seen[key]}'); merge the entries"
            report.error("E-DUPLICATE-NAME", f"tools.allow[{i}].name", msg, node.pos)
        seen.setdefault(key, name)
    for i, (name, node) in enumerate(_names(root, "deny")):
        if tool_key(name) in seen:
            msg = (
                f"tool '{name}' is both allowed (as '{seen[tool_key(name)]}') and denied; "
                "deny wins — remove one of them"
            )
            report.error("E-TOOL-CONFLICT", f"tools.deny[{i}].name", msg, node.pos)
