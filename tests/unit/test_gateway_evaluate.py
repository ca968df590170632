"""The gateway's decisions: seed 003's order and wording, and the safe thing wherever the
seed let a call through (each of those is a test here, named for the bug)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aitherfwd.gateway.evaluate import Call, ReasonClass, evaluate
from aitherfwd.gateway.model import ToolPolicy
from aitherfwd.gateway.ratelimit import RateLimits
from tests.unit.gateway_helpers import decide, policy, seed_policy

DOCS = "/home/user/documents"


def wide(text: str) -> str:
    """Fullwidth forms of ASCII letters (NFKC folds them back)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in text)


def test_the_seed_examples_decide_as_documented() -> None:
    p = seed_policy()
    assert decide(p, "filesystem.read", {"path": f"{DOCS}/notes.txt"}).allowed
    denied = decide(p, "shell.exec", {"cmd": "rm -rf /"})
    assert (denied.allowed, denied.reason) == (False, "tool is explicitly denied")
    assert decide(p, "unknown.tool").reason == "tool not in allowlist"
    assert decide(p, "filesystem.read", {"path": "/vault/x"}).reason == "path not in allowlist"
    assert decide(p, "filesystem.read", {"path": "/etc/shadow"}).reason == "path matches denylist"


def test_rate_limit_comes_before_the_deny_list() -> None:
    p = policy("tools:\n  rate_limit: {requests_per_minute: 1}\n  deny: [{name: shell.exec}]\n")
    limits = RateLimits()
    first = evaluate(p, Call("shell.exec"), now=0, limits=limits, resolve=os.path.realpath)
    second = evaluate(p, Call("shell.exec"), now=1, limits=limits, resolve=os.path.realpath)
    assert first.reason_class is ReasonClass.DENIED_TOOL
    assert (
        second.reason_class is ReasonClass.RATE_LIMITED and second.reason == "rate limit exceeded"
    )


def test_argument_checks_come_before_path_checks() -> None:
    p = policy(
        "tools:\n  allow:\n    - {name: fs, paths_allowlist: ['/ok/**'], max_arg_length: 8}\n"
    )
    d = decide(p, "fs", {"path": "/elsewhere/long"})
    assert d.reason_class is ReasonClass.ARGUMENTS and "exceeds max length (15 > 8)" in d.reason


# --- where the seed let calls through -------------------------------------------------


def test_seed_bug_dangling_symlink_inside_an_allowed_tree_is_denied(tmp_path: Path) -> None:
    tree = tmp_path / "allowed"
    tree.mkdir()
    (tree / "escape").symlink_to(tmp_path / "outside" / "new-file")  # does not exist yet
    p = policy(f"tools:\n  allow:\n    - {{name: fs.write, paths_allowlist: ['{tree}/**']}}\n")
    d = decide(p, "fs.write", {"path": str(tree / "escape")})
    assert (d.allowed, d.reason) == (False, "path not in allowlist")
    assert decide(p, "fs.write", {"path": str(tree / "fine.txt")}).allowed


def test_seed_bug_dotdot_after_a_symlink_is_resolved_as_the_kernel_does(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "deep" / "dir").mkdir(parents=True)
    (tmp_path / "deep" / "secret").write_text("x")
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "deep" / "dir")
    p = policy(
        f"tools:\n  allow:\n    - {{name: fs, paths_allowlist: ['{tmp_path}/allowed/**']}}\n"
    )
    # lexically allowed/secret; the kernel opens deep/secret
    d = decide(p, "fs", {"path": f"{tmp_path}/allowed/link/../secret"})
    assert (d.allowed, d.reason) == (False, "path not in allowlist")


def test_seed_bug_a_path_is_checked_as_the_tool_receives_it_not_only_decoded() -> None:
    p = policy("tools:\n  allow:\n    - {name: fs, paths_allowlist: ['/srv/%41/**']}\n")
    # the seed decoded to /srv/A/x, allowed it, and handed the tool /srv/%41/x... and the
    # reverse: an allowlist of the decoded form must not pass a raw %2e%2e
    assert not decide(p, "fs", {"path": "/srv/%41/x"}).allowed
    p2 = policy("tools:\n  allow:\n    - {name: fs, paths_allowlist: ['/srv/**']}\n")
    assert not decide(p2, "fs", {"path": "/srv/%2e%2e/etc/shadow"}).allowed
    assert not decide(p2, "fs", {"path": "/srv/..%2f..%2fetc/shadow"}).allowed


def test_seed_bug_paths_in_other_parameters_are_checked() -> None:
    p = seed_policy()
    for params in (
        {"file": "/etc/shadow"},
        {"src": "/etc/passwd"},
        {"path": f"{DOCS}/a", "dest": "/etc/shadow"},
        {"paths": [f"{DOCS}/a", "/etc/shadow"]},
        {"opts": {"target": "/root/.ssh/id_rsa"}},
        {"query": "/etc/shadow"},
    ):
        assert not decide(p, "filesystem.read", params).allowed, params


def test_seed_bug_a_star_in_a_denylist_matches_paths() -> None:
    p = policy(
        "tools:\n  allow:\n    - name: fs\n      paths_allowlist: ['/home/**']\n"
        "      paths_denylist: ['/home/*/.ssh', '*.key']\n"
    )
    assert decide(p, "fs", {"path": "/home/alice/.ssh/id_rsa"}).reason == "path matches denylist"
    assert decide(p, "fs", {"path": "/home/alice/db.key"}).reason == "path matches denylist"
    assert decide(p, "fs", {"path": "/home/alice/notes"}).allowed
    everything = policy("tools:\n  allow:\n    - {name: fs, paths_denylist: ['*']}\n")
    assert decide(everything, "fs", {"path": "/tmp/x"}).reason == "path matches denylist"


def test_seed_bug_case_variants_of_a_denied_tool_are_denied_under_default_allow() -> None:
    p = policy("tools:\n  default: allow\n  deny: [{name: shell.exec}]\n")
    for name in ("shell.exec", "Shell.Exec", "SHELL.EXEC", " shell.exec ", wide("shell.exec")):
        assert decide(p, name).reason == "tool is explicitly denied", name
    assert decide(p, "web.search").allowed


def test_default_allow_still_checks_the_tools_it_lists() -> None:
    p = policy(
        "tools:\n  default: allow\n  allow:\n    - {name: fs, paths_allowlist: ['/ok/**']}\n"
    )
    assert not decide(p, "fs", {"path": "/etc/shadow"}).allowed


# --- adversarial ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{DOCS}/../../../etc/shadow",
        f"{DOCS}/./../../../etc/passwd",
        f"{DOCS}//..//..//..//etc/shadow",
        "/etc//shadow",
        "//etc/shadow",
        f"{DOCS}/%2e%2e/%2e%2e/%2e%2e/etc/shadow",
        f"{DOCS}/%252e%252e/%252e%252e/x",
        f"{DOCS}/..%2F..%2F..%2Fetc%2Fshadow",
        f"{DOCS}/..%c0%af..%c0%afetc",
        f"{DOCS}/notes.txt\x00.pdf",
        f"{DOCS}/notes%00.txt",
        f"{DOCS}\\..\\..\\etc\\shadow",
        f"{DOCS}/\uff0e\uff0e/\uff0e\uff0e/etc",
        f"{DOCS}/a\u2215..\u2215..\u2215etc",
        "documents/notes.txt",
        "~/documents/notes.txt",
        "../etc/shadow",
        "file:///etc/shadow",
        "%2fetc%2fshadow",
        f"{DOCS}/%25252525252e%25252525252e/%25252525252e%25252525252e/x",
        f"{DOCS}/" + "a/" * 2100,
    ],
)
def test_traversal_and_encoding_variants_are_denied(path: str) -> None:
    d = decide(seed_policy(), "filesystem.read", {"path": path})
    assert not d.allowed, path
    assert d.reason_class in (ReasonClass.PATH, ReasonClass.ARGUMENTS), (path, d.reason)


def test_a_symlink_created_on_disk_pointing_outside_is_denied(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    (tree / "to-outside").symlink_to(outside)
    (tree / "chain1").symlink_to(tree / "chain2")
    (tree / "chain2").symlink_to(outside / "secret")
    p = policy(f"tools:\n  allow:\n    - {{name: fs, paths_allowlist: ['{tree}/**']}}\n")
    assert not decide(p, "fs", {"path": str(tree / "to-outside" / "secret")}).allowed
    assert not decide(p, "fs", {"path": str(tree / "chain1")}).allowed
    (tree / "inside").symlink_to(tree / "real")
    assert decide(p, "fs", {"path": str(tree / "inside")}).allowed


def test_overlong_arguments_are_measured_in_utf8_bytes() -> None:
    p = policy("tools:\n  allow:\n    - {name: t, max_arg_length: 4}\n")
    assert decide(p, "t", {"q": "abcd"}).allowed
    assert not decide(p, "t", {"q": "abcde"}).allowed
    assert not decide(p, "t", {"q": "ééé"}).allowed  # 6 bytes
    assert not decide(p, "t", {"q": ["ok", {"deep": "toolong"}]}).allowed
    assert not decide(p, "t", {"a" * 10: 1}).allowed  # keys are input too


@pytest.mark.parametrize(
    "query",
    [
        "password",
        "PASSWORD",
        "PaSsWoRd",
        "my-Secret-key",
        wide("password"),
        "pass%77ord",
        "SECRET",
    ],
)
def test_case_and_width_variants_of_blocked_words_are_denied(query: str) -> None:
    d = decide(seed_policy(), "web.search", {"q": query})
    assert not d.allowed and d.reason_class is ReasonClass.ARGUMENTS


def test_blocked_words_are_found_in_nested_and_non_string_params() -> None:
    p = seed_policy()
    assert not decide(p, "web.search", {"q": {"inner": ["x", "the secret"]}}).allowed
    assert not decide(p, "web.search", {"password": True}).allowed
    assert decide(p, "web.search", {"q": "weather", "n": 5, "safe": True, "x": None}).allowed


def test_params_too_deep_or_too_many_are_invalid() -> None:
    p = seed_policy()
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(40):
        cur["x"] = {}
        cur = cur["x"]  # type: ignore[assignment]
    assert decide(p, "web.search", deep).reason_class is ReasonClass.INVALID
    many = {"q": list(range(5000))}
    assert decide(p, "web.search", many).reason_class is ReasonClass.INVALID


def test_a_regex_blocklist_matches_case_insensitively() -> None:
    p = policy("tools:\n  allow:\n    - {name: t, args_blocklist_regex: ['rm\\s+-rf']}\n")
    assert not decide(p, "t", {"cmd": "RM   -RF /"}).allowed
    assert decide(p, "t", {"cmd": "ls"}).allowed


def test_path_params_names_exactly_the_path_parameters() -> None:
    p = policy(
        "tools:\n  allow:\n    - name: fs\n      paths_allowlist: ['/ok/**']\n"
        "      path_params: [from, to]\n"
    )
    assert not decide(p, "fs", {"from": "/ok/a", "to": "/etc/x"}).allowed
    assert decide(p, "fs", {"from": "/ok/a", "to": "/ok/b", "note": "a/b"}).allowed


# --- rate limits ----------------------------------------------------------------------


def _rated(rpm: int, tool_rpm: int | None = None) -> ToolPolicy:
    tool = f", rate_limit: {{requests_per_minute: {tool_rpm}}}" if tool_rpm else ""
    return policy(
        f"tools:\n  rate_limit: {{requests_per_minute: {rpm}}}\n"
        f"  allow:\n    - {{name: a{tool}}}\n    - {{name: b}}\n"
    )


def test_the_sliding_window_admits_again_exactly_60_seconds_after_the_oldest_call() -> None:
    p, limits = _rated(3), RateLimits()

    def at(t: float) -> bool:
        return evaluate(p, Call("a"), now=t, limits=limits, resolve=os.path.realpath).allowed

    assert [at(0.0), at(10.0), at(20.0)] == [True, True, True]
    assert not at(59.999)  # a fixed window starting at 0 would still be full; so is ours
    assert at(60.0)  # the call at 0.0 left the window
    assert not at(60.0)
    assert at(70.0)
    d = evaluate(p, Call("a"), now=70.5, limits=limits, resolve=os.path.realpath)
    assert d.reason_class is ReasonClass.RATE_LIMITED and d.retry_after == pytest.approx(9.5)


def test_refused_calls_do_not_extend_the_ban() -> None:
    p, limits = _rated(1), RateLimits()
    assert evaluate(p, Call("a"), now=0, limits=limits, resolve=os.path.realpath).allowed
    for t in range(1, 60):
        assert not evaluate(p, Call("a"), now=t, limits=limits, resolve=os.path.realpath).allowed
    assert evaluate(p, Call("a"), now=60, limits=limits, resolve=os.path.realpath).allowed


def test_each_agent_has_its_own_budget_and_each_tool_its_own_within_it() -> None:
    p, limits = _rated(3, tool_rpm=1), RateLimits()

    def ok(tool: str, agent: str) -> bool:
        call = Call(tool, {}, agent)
        return evaluate(p, call, now=0, limits=limits, resolve=os.path.realpath).allowed

    assert ok("a", "alice") and not ok("a", "alice")  # a: 1 per minute per agent
    assert ok("b", "alice") and ok("b", "alice")  # alice's 3: a, b, b
    assert not ok("b", "alice")
    assert ok("a", "bob") and ok("b", "bob")  # bob is not alice
