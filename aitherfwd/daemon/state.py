"""The daemon's generations and reload results (layer L3): immutable snapshots.

Owns: `Generation` — one validated policy, its compiled ruleset and evaluator, swapped in
only after the kernel accepted it — `ReloadOutcome`, what the last reload did, and
`describe`, one diagnostic or reload error as a line for logs and systemd STATUS=.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.compiler import Ruleset
from aitherfwd.evaluator import Evaluator
from aitherfwd.policy.diagnostics import render_fields
from aitherfwd.policy.model import Policy


@dataclass(frozen=True, slots=True)
class Generation:
    number: int
    policy: Policy
    ruleset: Ruleset
    evaluator: Evaluator
    path: Path
    applied_at: float


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    result: str  # applied | unchanged | rejected
    generation: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0
    trigger: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "generation": self.generation,
            "errors": [{**e, "rendered": render_fields(e)} for e in self.errors],
            "warnings": [{**w, "rendered": render_fields(w)} for w in self.warnings],
        }


def describe(error: dict[str, Any]) -> str:
    """One diagnostic as a line: `file:line:col: error[CODE] path: message` (parts it has)."""
    return render_fields(error)
