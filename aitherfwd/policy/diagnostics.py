"""Located, coded diagnostics and the reporter that collects them (layer L1, pure).

Owns: `Pos`, `Diagnostic`, `Reporter`, did-you-mean suggestions, the summary line and THE
renderer of a diagnostic, `file:line:col: error[CODE] path: message` — used by the CLI
(check, check-config, reload, status), the API (each diagnostic dict carries its `rendered`
line), systemd STATUS= and the log. `render_fields` renders the dict form (what travels over
the control socket), so every consumer prints the same line. Used for the policy and the
daemon config alike. Must not import adapters or anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Pos:
    """A place in a source file; line and column are 1-based as editors show them."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    code: str
    path: str
    message: str
    pos: Pos | None = None

    def render(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        subject = f"{self.path}: " if self.path else ""
        return f"{where}{self.severity}[{self.code}] {subject}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": str(self.severity),
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "file": self.pos.file if self.pos else None,
            "line": self.pos.line if self.pos else None,
            "column": self.pos.col if self.pos else None,
            "rendered": self.render(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnostic:
        """The inverse of `as_dict`, tolerant of the parts a plain error lacks (a reload
        refusal is `{"code", "message"}`; a position needs file, line and column)."""
        try:
            severity = Severity(data.get("severity") or "error")
        except ValueError:
            severity = Severity.ERROR
        file, line, col = data.get("file"), data.get("line"), data.get("column")
        pos = (
            Pos(file, line, col)
            if isinstance(file, str) and isinstance(line, int) and isinstance(col, int)
            else None
        )
        return cls(
            severity,
            str(data.get("code") or "E-INTERNAL"),
            str(data.get("path") or ""),
            str(data.get("message") or ""),
            pos,
        )


def render_fields(data: Mapping[str, Any]) -> str:
    """A diagnostic or error in its dict form, rendered exactly as `Diagnostic.render`."""
    return Diagnostic.from_dict(data).render()


def report_lines(diagnostics: Sequence[Diagnostic]) -> list[str]:
    """Every diagnostic on its own line, then the summary (nothing when there are none)."""
    if not diagnostics:
        return []
    return [*(d.render() for d in diagnostics), summary(diagnostics)]


@dataclass
class Reporter:
    """Collects every problem instead of stopping at the first."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, path: str, message: str, pos: Pos | None) -> None:
        self.items.append(Diagnostic(Severity.ERROR, code, path, message, pos))

    def warning(self, code: str, path: str, message: str, pos: Pos | None) -> None:
        self.items.append(Diagnostic(Severity.WARNING, code, path, message, pos))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.WARNING]

    def sorted(self) -> list[Diagnostic]:
        def key(d: Diagnostic) -> tuple[str, int, int, str]:
            if d.pos is None:
                return ("", 0, 0, d.path)
            return (d.pos.file, d.pos.line, d.pos.col, d.path)

        return sorted(self.items, key=key)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'X'?)' for the closest candidate, case-insensitively, or ''."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return f" (did you mean '{lowered[word.lower()]}'?)"
    import difflib  # noqa: PLC0415 - only a misspelt name needs it, not the daemon

    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


def summary(diagnostics: Sequence[Diagnostic]) -> str:
    errors = sum(1 for d in diagnostics if d.severity is Severity.ERROR)
    warnings = len(diagnostics) - errors
    return f"{errors} {_plural('error', errors)}, {warnings} {_plural('warning', warnings)}"


def _plural(word: str, count: int) -> str:
    return word if count == 1 else f"{word}s"
