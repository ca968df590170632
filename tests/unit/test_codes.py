"""The error-code registry is complete and exact: every code the package uses is
registered, every registered code is used, statuses agree with the transport, and the table
in docs/errors.md is the registry's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from aitherfwd import codes
from aitherfwd.adapters import control_http
from aitherfwd.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "aitherfwd"
CODE = re.compile(r"[EW]-[A-Z0-9]+(?:-[A-Z0-9]+)*")


def _used() -> dict[str, set[str]]:
    """Every string constant in the package that is a whole code, and where it appears
    (codes.py itself, the registry, excluded)."""
    used: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        if rel == "codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and CODE.fullmatch(node.value):
                used.setdefault(node.value, set()).add(rel)
    return used


def test_every_code_the_package_uses_is_registered() -> None:
    unregistered = {c: sorted(w) for c, w in _used().items() if c not in codes.REGISTRY}
    assert not unregistered, f"register these in aitherfwd/codes.py: {unregistered}"


def test_every_registered_code_is_used_somewhere() -> None:
    unused = sorted(set(codes.REGISTRY) - set(_used()))
    assert not unused, f"registered but used nowhere (remove them): {unused}"


def test_registry_entries_are_consistent() -> None:
    for code, entry in codes.REGISTRY.items():
        assert entry.code == code and CODE.fullmatch(code)
        assert entry.meaning and not entry.meaning.endswith(".")
        if code.startswith("W-"):
            assert entry.http is None and entry.exit is None, code
        else:
            assert entry.exit is not None, code
        if entry.http is not None:
            assert 400 <= entry.http <= 599, code
        if entry.area in ("policy", "config"):
            assert entry.http is None, f"{code}: diagnostics travel inside answers"


def test_unknown_codes_are_internal_errors_with_status_500() -> None:
    assert codes.lookup("E-NO-SUCH-THING").code == "E-INTERNAL"
    assert codes.http_status("E-NO-SUCH-THING") == 500
    assert codes.http_status("E-POLICY") == 500  # never an API answer's own code
    assert codes.http_status("E-KERNEL-REFUSED") == 409
    assert codes.exit_code("E-PORT-RANGE") is ExitCode.INVALID_POLICY
    assert codes.exit_code("E-CONFIG-RANGE") is ExitCode.USAGE


def test_one_code_per_method_not_allowed() -> None:
    assert [c.code for c in codes.REGISTRY.values() if c.http == 405] == ["E-METHOD"]


def test_transport_codes_answer_with_the_status_h11_suggested() -> None:
    for status, code in control_http._H11_CODES.items():
        assert codes.http_status(code) == status, code


def test_docs_errors_table_is_the_registry() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    begin, end = "<!-- registry:begin -->\n", "<!-- registry:end -->"
    table = text[text.index(begin) + len(begin) : text.index(end)]
    assert table == codes.markdown_table(), (
        "docs/errors.md is stale: paste `python -c 'from aitherfwd import codes; "
        'print(codes.markdown_table(), end="")\'` between the registry markers'
    )
