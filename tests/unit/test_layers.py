"""The layering holds: the pure core imports no adapter or daemon code, adapters import no
daemon code, and each third-party library has exactly one importer."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "aitherfwd"
L0 = {"errors", "codes", "clock"}
L1 = {
    "policy",
    "nft",
    "compiler",
    "egress",
    "evaluator",
    "reconcile",
    "zones",
    "forwarding",
    "dynamic",
    "control",
    "config",
    "roles",
    "durations",
    "stats",
    "evalindex",
    "audit_records",
    "audit_check",
    "audit_ocsf",
    "audit_view",
    "audit_sample",
    "decisions",
    "geo",
    "fleet",
}
L2 = {"adapters"}
L3 = {
    "daemon",
    "cli",
    "cli_audit",
    "cli_client",
    "cli_fleet",
    "cli_lazy",
    "client",
    "__main__",
    "testing",
    "fakekernel",
    "fakejournal",
    "fakebus",
}
L3 |= {
    "asgi",
    "gateway",
}  # the middleware (a client of the daemon) and the gateway (a pure core and its adapters;
# tests/unit/test_gateway_layers.py keeps them apart)
OWNERS = {  # library -> the only module allowed to import it
    "nftables": {"adapters/nft.py"},
    "pyroute2": set(),  # none: conntrack goes through adapters/ctquery.py (a test oracle only)
    "h11": {"adapters/control_http.py", "adapters/control_stream.py"},
    "inotify_simple": {"adapters/watch.py"},
    "systemd": {"adapters/systemd.py", "adapters/journal.py"},
    "sqlite3": {
        "adapters/store.py",
        "adapters/store_open.py",
        "adapters/store_schema.py",
        "adapters/outbox.py",
    },
    "nats": {"adapters/natsbus.py"},
    "dns": {"adapters/dns.py"},
    "maxminddb": {"adapters/geodb.py"},
    "yaml": {"policy/source.py"},
    "click": {
        "cli.py",
        "cli_client.py",
        "cli_audit.py",
        "cli_fleet.py",
        "cli_lazy.py",
        "gateway/cli.py",
    },
    "prometheus_client": {"adapters/metrics.py", "adapters/asgi_metrics.py", "gateway/metrics.py"},
    "starlette": {"gateway/app.py"},
    "uvicorn": {"gateway/serve.py"},
    "subprocess": set(),
    "pickle": set(),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _layer(rel: str) -> set[str]:
    top = rel.split("/", maxsplit=1)[0].removesuffix(".py")
    for layer in (L0, L1, L2, L3):
        if top in layer:
            return layer
    raise AssertionError(f"{rel} belongs to no layer; add it to tests/unit/test_layers.py")


def _modules() -> list[tuple[str, set[str]]]:
    return [
        (str(p.relative_to(PKG)), _imports(p))
        for p in sorted(PKG.rglob("*.py"))
        if p.name != "__init__.py" or p.parent == PKG
    ]


def test_lower_layers_never_import_higher_ones() -> None:
    order = [L0, L1, L2, L3]
    for rel, imports in _modules():
        if rel == "__init__.py":
            continue
        mine = order.index(_layer(rel))
        for name in imports:
            if not name.startswith("aitherfwd."):
                continue
            target = name.split(".")[1]
            if target == "__init__":
                continue
            theirs = next(i for i, layer in enumerate(order) if target in layer)
            assert theirs <= mine, f"{rel} (L{mine}) imports {name} (L{theirs})"


def test_each_library_has_one_importer() -> None:
    for rel, imports in _modules():
        for name in imports:
            lib = name.split(".")[0]
            if lib in OWNERS:
                assert rel in OWNERS[lib], f"{rel} imports {lib}; only {OWNERS[lib]} may"


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported: top-level statements only (imports inside
    functions and under `if TYPE_CHECKING:` do not run at import time)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_import_cycles_between_modules() -> None:
    modules = {
        "aitherfwd."
        + str(p.relative_to(PKG).with_suffix("")).replace("/", ".").removesuffix(".__init__"): p
        for p in PKG.rglob("*.py")
    }
    graph = {
        name: {i for i in _runtime_imports(path) if i in modules and i != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
