"""The `journal:` section of the policy: threats read from the journal (layer L1, pure).

Owns: parsing the sources — `builtin` (openssh, nginx, apache; policy/journal_builtins.py)
or a custom `match` (journal field → value or values) with `patterns` (regular expressions
over MESSAGE with a named group `address`), `type`, `severity` and `examples` — with located
diagnostics, and the checks `aitherfwd check` reports as warnings: a pattern that matches
none of its source's example lines (the builtins' sample lines), an example no pattern
reads, a custom source without examples, and a match on fields any local user can write.
Reading the journal and matching entries live in adapters/journal.py and dynamic/journal.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aitherfwd.dynamic.journal import apply_patterns
from aitherfwd.policy.diagnostics import Reporter, did_you_mean
from aitherfwd.policy.fields import Fields
from aitherfwd.policy.journal_builtins import BUILTINS, MODES, TRUSTED_FIELDS
from aitherfwd.policy.model import JournalPattern, JournalSource, Severity
from aitherfwd.policy.source import YNode

SOURCE_KEYS = {"name", "builtin", "mode", "match", "patterns", "type", "severity", "examples"}
BUILTIN_KEYS = {"name", "builtin", "mode"}
MAX_SOURCES = 32
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 2000
MAX_EXAMPLES = 64
FIELD_RE = re.compile(r"^_{0,2}[A-Z0-9][A-Z0-9_]{0,63}$")
TYPE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_journal(node: YNode, f: Fields, report: Reporter) -> tuple[JournalSource, ...] | None:
    items = f.items(node, "journal")
    if items is None:
        return None
    if len(items) > MAX_SOURCES:
        report.error("E-RANGE", "journal", f"{len(items)} sources; at most {MAX_SOURCES}", node.pos)
        return None
    sources: list[JournalSource] = []
    ok = True
    for i, item in enumerate(items):
        src = _Source(f, report, f"journal[{i}]").parse(item)
        if src is None:
            ok = False
        elif any(s.name == src.name for s in sources):
            report.error(
                "E-DUPLICATE-NAME",
                f"journal[{i}].name",
                f"journal source '{src.name}' is defined twice",
                item.value["name"].pos,
            )
            ok = False
        else:
            sources.append(src)
    return tuple(sources) if ok else None


class _Source:
    def __init__(self, f: Fields, report: Reporter, path: str) -> None:
        self.f, self.report, self.path = f, report, path

    def parse(self, node: YNode) -> JournalSource | None:
        m = self.f.mapping(node, self.path, SOURCE_KEYS, frozenset({"name"}))
        if m is None or "name" not in m:
            return None
        name = self.f.name(m["name"], f"{self.path}.name")
        if name is None:
            return None
        if "builtin" in m:
            return self.builtin(name, m)
        if "mode" in m:
            self._conflict(m["mode"], "mode", "`mode` belongs to a builtin source")
            return None
        return self.custom(name, node, m)

    def _conflict(self, node: YNode, key: str, message: str) -> None:
        self.report.error(
            "E-JOURNAL-SOURCE", f"{self.path}.{key}", message, node.key_pos or node.pos
        )

    def builtin(self, name: str, m: dict[str, YNode]) -> JournalSource | None:
        ok = True
        for key in sorted(m.keys() - BUILTIN_KEYS):
            self._conflict(m[key], key, f"a builtin source takes only name and mode, not `{key}`")
            ok = False
        kind = self.f.string(m["builtin"], f"{self.path}.builtin")
        if kind is not None and kind not in BUILTINS:
            self.report.error(
                "E-ENUM",
                f"{self.path}.builtin",
                f"'{kind}' is not one of {', '.join(BUILTINS)}{did_you_mean(kind, BUILTINS)}",
                m["builtin"].pos,
            )
            kind = None
        mode = self.f.string(m["mode"], f"{self.path}.mode") if "mode" in m else "normal"
        if mode is not None and mode not in MODES:
            self.report.error(
                "E-ENUM",
                f"{self.path}.mode",
                f"'{mode}' is not one of {', '.join(MODES)}{did_you_mean(mode, MODES)}",
                m["mode"].pos,
            )
            mode = None
        if not ok or kind is None or mode is None:
            return None
        b = BUILTINS[kind]
        patterns = b.patterns + (b.aggressive if mode == "aggressive" else ())
        samples = b.samples + (b.aggressive_samples if mode == "aggressive" else ())
        lines = [line for line, _ in samples]
        self._check_examples(patterns, lines, m["builtin"], name)
        return JournalSource(name, b.match, patterns, kind, tuple(lines))

    def custom(self, name: str, node: YNode, m: dict[str, YNode]) -> JournalSource | None:
        for key in ("match", "patterns", "type"):
            if key not in m:
                self.report.error(
                    "E-MISSING-KEY",
                    f"{self.path}.{key}",
                    f"a source needs `builtin`, or `match`, `patterns` and `type` (no `{key}`)",
                    node.pos,
                )
        if not {"match", "patterns", "type"} <= m.keys():
            return None
        match = self.match(m["match"])
        kind = self.threat_type(m["type"])
        severity = (
            self.f.enum(m["severity"], f"{self.path}.severity", Severity)
            if "severity" in m
            else Severity.MEDIUM
        )
        examples = self.examples(m["examples"]) if "examples" in m else []
        patterns = self.patterns(m["patterns"], kind or "", severity or Severity.MEDIUM)
        if match is None or kind is None or severity is None or examples is None:
            return None
        if patterns is None:
            return None
        if not any(field in TRUSTED_FIELDS for field, _ in match):
            self.report.warning(
                "W-JOURNAL-FORGEABLE",
                f"{self.path}.match",
                "any local user can write entries that fit this match (logger -t ...); add a "
                f"field journald sets itself: {', '.join(sorted(TRUSTED_FIELDS))}",
                m["match"].pos,
            )
        if "examples" not in m:
            self.report.warning(
                "W-JOURNAL-NO-EXAMPLES",
                f"{self.path}.examples",
                "no example lines: add `examples:` (real log lines) so that check can show "
                "each pattern reads an address",
                node.pos,
            )
        else:
            self._check_examples(patterns, examples, m["examples"], name)
        return JournalSource(name, match, patterns, None, tuple(examples))

    def match(self, node: YNode) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        path = f"{self.path}.match"
        m = self.f.mapping(node, path, set(node.value) if node.is_map else set())
        if m is None:
            return None
        if not m:
            self.report.error("E-EMPTY", path, "an empty match would read every entry", node.pos)
            return None
        out: list[tuple[str, tuple[str, ...]]] = []
        for field, child in m.items():
            if not FIELD_RE.match(field):
                self.report.error(
                    "E-NAME",
                    f"{path}.{field}",
                    f"'{field}' is not a journal field name (upper-case letters, digits, '_')",
                    child.key_pos or child.pos,
                )
                return None
            values = self.f.each(child, f"{path}.{field}", self.f.string, scalar_ok=True)
            if values is None:
                return None
            if not values:
                self.report.error("E-EMPTY", f"{path}.{field}", "no value to match", child.pos)
                return None
            out.append((field, tuple(dict.fromkeys(values))))
        return tuple(out)

    def threat_type(self, node: YNode) -> str | None:
        text = self.f.string(node, f"{self.path}.type")
        if text is not None and not TYPE_RE.match(text):
            self.report.error(
                "E-THREAT-TYPE",
                f"{self.path}.type",
                f"'{text}' is not a threat type: 1-64 letters, digits, '_', '-', '.' "
                "(as POST /v1/threats takes them)",
                node.pos,
            )
            return None
        return text.upper() if text is not None else None

    def patterns(
        self, node: YNode, kind: str, severity: Severity
    ) -> tuple[JournalPattern, ...] | None:
        path = f"{self.path}.patterns"
        items = self.f.items(node, path, scalar_ok=True)
        if items is None:
            return None
        if not items or len(items) > MAX_PATTERNS:
            self.report.error("E-RANGE", path, f"1-{MAX_PATTERNS} patterns", node.pos)
            return None
        out: list[JournalPattern] = []
        for i, item in enumerate(items):
            regex = self._regex(item, f"{path}[{i}]")
            if regex is not None:
                out.append(JournalPattern(regex, kind, severity))
        return tuple(out) if len(out) == len(items) else None

    def _regex(self, node: YNode, path: str) -> re.Pattern[str] | None:
        text = self.f.string(node, path)
        if text is None:
            return None
        if len(text) > MAX_PATTERN_CHARS:
            self.report.error(
                "E-JOURNAL-REGEX", path, f"longer than {MAX_PATTERN_CHARS} characters", node.pos
            )
            return None
        try:
            regex = re.compile(text)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            self.report.error(
                "E-JOURNAL-REGEX", path, f"not a regular expression: {exc.msg}{where}", node.pos
            )
            return None
        if "address" not in regex.groupindex:
            self.report.error(
                "E-JOURNAL-ADDRESS-GROUP",
                path,
                "the pattern has no named group `address`: write (?P<address>\\S+) where the "
                "offender's address stands",
                node.pos,
            )
            return None
        return regex

    def examples(self, node: YNode) -> list[str] | None:
        path = f"{self.path}.examples"
        values = self.f.each(node, path, self.f.string, scalar_ok=True)
        if values is not None and len(values) > MAX_EXAMPLES:
            self.report.error("E-RANGE", path, f"at most {MAX_EXAMPLES} examples", node.pos)
            return None
        return values

    def _check_examples(
        self, patterns: Sequence[JournalPattern], lines: Sequence[str], at: YNode, name: str
    ) -> None:
        """Warnings: a pattern no example line fits; an example no pattern reads."""
        used: set[int] = set()
        for j, line in enumerate(lines):
            verdict = apply_patterns(name, patterns, line)
            hit = next((k for k, p in enumerate(patterns) if p.regex.search(line)), None)
            if hit is not None:
                used.add(hit)
            if verdict.hit is None:
                why = (
                    "gives no valid address"
                    if verdict.bad_address is not None
                    else "fits no pattern"
                )
                self.report.warning(
                    "W-JOURNAL-UNMATCHED",
                    f"{self.path}.examples[{j}]",
                    f"example {why}: {line[:80]!r}",
                    at.pos,
                )
        for k, p in enumerate(patterns):
            if k not in used:
                self.report.warning(
                    "W-JOURNAL-UNMATCHED",
                    f"{self.path}.patterns[{k}]",
                    f"pattern matches none of the example lines: {p.regex.pattern[:80]!r}",
                    at.pos,
                )
