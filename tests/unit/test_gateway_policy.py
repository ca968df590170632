"""Tool policies load as seed 003 wrote them, and every mistake is located and coded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aitherfwd.gateway.model import Default
from aitherfwd.gateway.parse import parse_tool_policy
from tests.unit.gateway_helpers import SEED_POLICY, policy

# the reference's annotated example: `defaults:` and `burst_size` are accepted
ANNOTATED = """\
version: 1
defaults:
  network: {runtime_egress: deny}
  logging: {store_raw_prompts: false, store_raw_responses: false}
tools:
  default: "deny"
  rate_limit:
    requests_per_minute: 120
    burst_size: 20
  allow:
    - name: "filesystem.write"
      paths_allowlist: ["/home/user/outputs/**"]
      args_blocklist: ["../", "/etc/", "/usr/"]
      max_arg_length: 4096
    - name: "web.search"
      args_blocklist: ["password", "secret", "api_key"]
  deny:
    - name: "shell.exec"       # No shell command execution
    - name: "network.fetch"
"""


def test_the_seed_readme_policy_loads_unchanged() -> None:
    result = parse_tool_policy(SEED_POLICY.read_text(), str(SEED_POLICY))
    assert result.ok and result.diagnostics == []
    p = result.policy
    assert p is not None
    assert p.default is Default.DENY and p.requests_per_minute == 120
    assert [e.name for e in p.allow] == ["filesystem.read", "web.search"]
    assert p.deny == ("shell.exec", "process.spawn")
    assert p.allow[0].max_arg_length == 4096 and len(p.allow[0].paths_denylist) == 2


def test_the_reference_annotated_example_loads() -> None:
    p = policy(ANNOTATED)
    assert p.allowed_entry("web.search") is not None and p.denies("network.fetch")


def test_zero_means_the_seeds_defaults() -> None:
    p = policy(
        "tools:\n  rate_limit: {requests_per_minute: 0}\n  allow:\n"
        "    - {name: a, max_arg_length: 0}\n"
    )
    assert p.requests_per_minute == 120 and p.allow[0].max_arg_length == 4096


BROKEN = """\
version: 2
tools:
  defualt: deny
  allow:
    - name: fs.read
      paths_allowlist: ["rel/x", "/a/b**c", "/a/../b"]
      args_blocklist_regex: ["("]
      network: {param: url, ports: [70000], ttl: soon}
    - name: FS.Read
  deny:
    - name: fs.read
"""


def test_every_mistake_is_reported_located_and_coded() -> None:
    result = parse_tool_policy(BROKEN, "tools.yaml")
    assert not result.ok
    got = [(d.code, d.path, d.pos.line if d.pos else 0) for d in result.diagnostics]
    assert got == [
        ("E-RANGE", "version", 1),
        ("E-UNKNOWN-KEY", "tools.defualt", 3),
        ("E-GLOB", "tools.allow[0].paths_allowlist[0]", 6),
        ("E-GLOB", "tools.allow[0].paths_allowlist[1]", 6),
        ("E-GLOB", "tools.allow[0].paths_allowlist[2]", 6),
        ("E-PATTERN", "tools.allow[0].args_blocklist_regex[0]", 7),
        ("E-RANGE", "tools.allow[0].network.ports[0]", 8),
        ("E-DURATION", "tools.allow[0].network.ttl", 8),
        ("E-DUPLICATE-NAME", "tools.allow[1].name", 9),
        ("E-TOOL-CONFLICT", "tools.deny[0].name", 11),
    ]
    assert "did you mean 'default'" in result.diagnostics[1].message


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("tools: {default: maybe}\n", "E-ENUM"),
        ("tools: {allow: [{paths_allowlist: []}]}\n", "E-MISSING-KEY"),
        ("tools: {allow: {name: a}}\n", "E-TYPE"),
        ("tools: {allow: [{name: a, max_arg_length: -1}]}\n", "E-RANGE"),
        ("tools: {allow: [{name: a, network: {ports: [443]}}]}\n", "E-MISSING-KEY"),
        ("tools: [\n", "E-YAML"),
        ("tools: {allow: [{name: a}], allow: []}\n", "E-DUPLICATE-KEY"),
        ("version: 1\n", "E-MISSING-KEY"),
    ],
)
def test_malformed_tool_policies_are_refused_with_a_code(text: str, code: str) -> None:
    result = parse_tool_policy(text, "t.yaml")
    assert not result.ok and code in {d.code for d in result.diagnostics}


def test_a_bare_star_in_a_denylist_denies_every_path() -> None:
    p = policy("tools:\n  allow:\n    - {name: fs, paths_denylist: ['*']}\n")
    assert p.allow[0].paths_denylist[0].matches("/anything/at/all")


def _check(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aitherfwd", "check", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_aitherfwd_check_validates_a_tool_policy(tmp_path: Path) -> None:
    ok = _check(SEED_POLICY)
    assert ok.returncode == 0 and "valid tool policy" in ok.stdout
    bad = tmp_path / "tools.yaml"
    bad.write_text(BROKEN)
    out = _check(bad)
    assert out.returncode == 3
    assert f"{bad}:11:13: error[E-TOOL-CONFLICT] tools.deny[0].name:" in out.stdout
    assert out.stdout.rstrip().endswith("10 errors, 0 warnings")
    as_json = json.loads(_check(bad, "--json").stdout)
    assert as_json["valid"] is False and len(as_json["diagnostics"]) == 10


def test_the_packaged_gateway_policy_is_valid_and_default_deny() -> None:
    text = (Path(__file__).resolve().parents[2] / "packaging" / "gateway.yaml").read_text()
    p = policy(text)
    assert p.default is Default.DENY and p.denies("shell.exec")
