"""The tool policy as the gateway enforces it (layer L1, pure).

Owns: `ToolPolicy` (seed 003's `version`, `tools.default`, `tools.rate_limit`,
`tools.allow[]`, `tools.deny[]`, plus our additions: per-tool `rate_limit`,
`args_blocklist_regex`, `path_params` and `network`), `ToolEntry`, `NetworkSpec` and
`tool_key`, the canonical form tool names are compared in (so `Shell.Exec` is the denied
`shell.exec`). Values are parsed once by `gateway.parse`; nothing here reads files.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum

from aitherfwd.gateway.globs import Glob

DEFAULT_MAX_ARG_LENGTH = 4096  # bytes of one argument (UTF-8), as the seed
DEFAULT_REQUESTS_PER_MINUTE = 120  # the seed's default when none (or 0) is given


class Default(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


def tool_key(name: str) -> str:
    """The form tool names are compared in: NFKC, case-folded, outer whitespace removed."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """`network: {param: url, ports: [443], ttl: 60s}`: an allowed call opens the host its
    parameter names, on these ports, for this long, through a sandbox grant."""

    param: str
    ports: tuple[int, ...] = ()
    ttl: int = 60


@dataclass(frozen=True, slots=True)
class ToolEntry:
    name: str
    paths_allowlist: tuple[Glob, ...] = ()
    paths_denylist: tuple[Glob, ...] = ()
    max_arg_length: int = DEFAULT_MAX_ARG_LENGTH
    args_blocklist: tuple[str, ...] = ()  # substrings, NFKC-normalised and case-folded
    args_blocklist_regex: tuple[re.Pattern[str], ...] = ()
    path_params: tuple[str, ...] | None = None  # None: every path-like parameter
    requests_per_minute: int | None = None  # per agent, for this tool
    network: NetworkSpec | None = None

    @property
    def key(self) -> str:
        return tool_key(self.name)

    @property
    def checks_paths(self) -> bool:
        return bool(self.paths_allowlist or self.paths_denylist)


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    version: int = 1
    default: Default = Default.DENY
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE  # per agent, all tools
    allow: tuple[ToolEntry, ...] = ()
    deny: tuple[str, ...] = ()  # names as written
    sha256: str = ""
    _allow_by_key: dict[str, ToolEntry] = field(default_factory=dict, compare=False)
    _deny_keys: frozenset[str] = field(default_factory=frozenset, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow_by_key", {e.key: e for e in self.allow})
        object.__setattr__(self, "_deny_keys", frozenset(tool_key(n) for n in self.deny))

    def allowed_entry(self, name: str) -> ToolEntry | None:
        return self._allow_by_key.get(tool_key(name))

    def denies(self, name: str) -> bool:
        return tool_key(name) in self._deny_keys

    def tool_names(self) -> list[str]:
        """Every tool the policy names (the bounded label set of the metrics)."""
        return sorted({e.name for e in self.allow} | set(self.deny))
