"""What the Debian package ships holds up without building it: the default policy is
valid and cannot lock out SSH, the daemon config parses, and every third-party library the
code imports is a Debian dependency of the package (or shipped inside it)."""

from __future__ import annotations

import ast
import ipaddress
import sys
from pathlib import Path

import pytest

from aitherfwd.config import parse_config
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import Protocol
from aitherfwd.policy.parse import parse_policy

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
NOW = 1_700_000_000.0
# import name -> the Debian package that provides it; None: shipped in the .deb (vendored)
DEBIAN = {
    "nftables": "python3-nftables",
    "h11": "python3-h11",
    "systemd": "python3-systemd",
    "yaml": "python3-yaml",
    "click": "python3-click",
    "prometheus_client": "python3-prometheus-client",
    "inotify_simple": None,
    "dns": "python3-dnspython",
    "maxminddb": "python3-maxminddb",
    "starlette": "python3-starlette",
    "uvicorn": "python3-uvicorn",
}
# imported only when the feature is configured, from an optional extra Debian lacks (the
# daemon then says what to install): nats-py for [fleet] (docs/fleet.md)
OPTIONAL = {"nats"}


def _default_policy_evaluator() -> Evaluator:
    result = parse_policy((PACKAGING / "policy.yaml").read_text(), "policy.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    assert not [d for d in result.diagnostics if d.severity is Severity.WARNING]
    return Evaluator(result.policy)


@pytest.mark.parametrize(
    "source", ["203.0.113.9", "10.1.2.3", "192.168.1.20", "2001:db8::7", "fd12::1", "1.1.1.1"]
)
def test_default_policy_never_locks_out_ssh(source: str) -> None:
    evaluator = _default_policy_evaluator()
    request = Request(ipaddress.ip_address(source), Protocol.TCP, 22)
    for i in range(200):  # no rate limit either: the 200th new session passes too
        assert evaluator.evaluate(request, NOW + i / 1000).verdict == "allow"


def test_default_policy_drops_other_inbound_and_keeps_admin_ports() -> None:
    evaluator = _default_policy_evaluator()
    request = Request(ipaddress.ip_address("203.0.113.9"), Protocol.TCP, 8080)
    assert evaluator.evaluate(request, NOW).verdict == "deny"
    assert evaluator.policy.settings.admin_ports == (22,)


def test_packaged_daemon_config_parses() -> None:
    text = (PACKAGING / "aitherfwd.toml").read_text()
    cfg = parse_config(text, lambda _name: 0, lambda _name: 0)
    assert str(cfg.policy) == "/etc/aitherfwd/policy.yaml"
    assert str(cfg.socket) == "/run/aitherfwd/control.sock"


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "aitherfwd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "aitherfwd"}


def _depends() -> set[str]:
    """Package names in the binary package's Depends (a deb822 field: continuation lines
    start with a space; lines starting with # are comments)."""
    control = (PACKAGING / "debian" / "control").read_text()
    stanza = control.split("\nPackage: aitherfwd\n", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(stanza) if ln.startswith("Depends:"))
    value = [stanza[start].removeprefix("Depends:")]
    for line in stanza[start + 1 :]:
        if line.startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            break
        value.append(line)
    return {item.split()[0] for item in " ".join(value).split(",") if item.strip()}


def test_every_imported_library_is_a_debian_dependency_or_shipped() -> None:
    depends = _depends()
    for name in sorted(_third_party_imports() - OPTIONAL):
        assert name in DEBIAN, (
            f"aitherfwd imports {name!r}: add its Debian package to Depends in "
            f"packaging/debian/control (apt-cache policy python3-...) and to DEBIAN here"
        )
        package = DEBIAN[name]
        if package is None:
            assert (PACKAGING / "vendor" / f"{name}.py").exists(), f"{name} is not vendored"
        else:
            assert package in depends, f"{package} (for {name}) is missing from Depends"
