"""Golden tests: the compiler's output is pinned byte for byte.

Every policy in `policies/` and every `tests/golden/<case>/policy.yaml` is a case; its
expected output lives beside it as `expected.json`. Regenerate deliberately with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/golden` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aitherfwd.adapters.files import load_policy
from aitherfwd.compiler import compile_policy

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _cases() -> list[tuple[str, Path, Path]]:
    cases = [
        (f"policies/{p.stem}", p, HERE / "policies" / f"{p.stem}.expected.json")
        for p in sorted((ROOT / "policies").glob("*.yaml"))
    ]
    cases += [
        (d.name, d / "policy.yaml", d / "expected.json")
        for d in sorted(HERE.iterdir())
        if (d / "policy.yaml").exists()
    ]
    return cases


@pytest.mark.parametrize(("name", "policy", "expected"), _cases(), ids=[c[0] for c in _cases()])
def test_compiler_output_matches_golden(name: str, policy: Path, expected: Path) -> None:
    result = load_policy(policy)
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    out = compile_policy(result.policy).render_json()
    if os.environ.get("UPDATE_GOLDEN"):
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(out)
    assert expected.exists(), f"no golden file for {name}: run with UPDATE_GOLDEN=1"
    assert out == expected.read_text(), f"{name}: compiler output changed"


def test_compiling_twice_gives_byte_identical_output() -> None:
    policy = load_policy(ROOT / "policies" / "default.yaml").policy
    assert policy is not None
    first, second = compile_policy(policy), compile_policy(policy)
    assert first.render_json() == second.render_json()
    assert first.sha256 == second.sha256
