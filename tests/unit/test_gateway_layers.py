"""The gateway's core stays pure: its modules import only the standard library's pure
parts, the firewall's pure core (L0/L1) and each other — never an adapter, a file, a
socket or the HTTP stack. The service and its adapters may import the core."""

from __future__ import annotations

import ast
from pathlib import Path

GW = Path(__file__).resolve().parents[2] / "aitherfwd" / "gateway"
CORE = {
    "globs",
    "model",
    "parse",
    "params",
    "paths",
    "ratelimit",
    "network",
    "mcp",
    "evaluate",
    "stats",
}
PURE_STDLIB = {
    "__future__", "bisect", "collections", "dataclasses", "enum", "hashlib", "ipaddress",
    "posixpath", "re", "typing", "unicodedata", "urllib",
}  # fmt: skip
PURE_AITHERFWD = {"errors", "codes", "clock", "durations", "policy", "audit_records", "gateway"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_gateway_core_imports_nothing_that_does_io() -> None:
    for name in sorted(CORE):
        for imported in _imports(GW / f"{name}.py"):
            parts = imported.split(".")
            if parts[0] == "aitherfwd":
                assert parts[1] in PURE_AITHERFWD, f"gateway/{name}.py imports {imported}"
                if parts[1] == "gateway":
                    assert parts[2] in CORE, f"gateway/{name}.py imports {imported}"
                if parts[1] == "policy":
                    assert parts[2] in {"diagnostics", "fields", "source"}, imported
            else:
                assert parts[0] in PURE_STDLIB, f"gateway/{name}.py imports {imported}"


def test_every_gateway_module_is_small_and_says_what_it_owns() -> None:
    for path in sorted(GW.glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) < 400, path.name
        assert ast.get_docstring(ast.parse(text)), path.name
