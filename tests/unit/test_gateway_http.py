"""A real gateway (`aitherfwd gateway`, served by uvicorn on a loopback port) answered
through real clients: seed 003's curl examples byte for byte, then httpx as an attacker
(oversized and malformed bodies, wrong tokens, reloads during traffic) and as an MCP proxy."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aitherfwd.audit_check import validate_line
from lab.gateway import GatewayProc
from lab.wait import until
from tests.unit.gateway_helpers import SEED_POLICY

SEED = SEED_POLICY.read_text()


@pytest.fixture(scope="module")
def seed_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("gw")
    (tmp / "service-token").write_text("s3cret-token\n")
    with GatewayProc(tmp, SEED) as gw:
        yield gw


def _curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-s", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_seeds_curl_examples_answer_as_documented(seed_gw: GatewayProc) -> None:
    allowed = _curl(
        "-X", "POST", f"{seed_gw.url}/v1/evaluate", "-H", "Content-Type: application/json",
        "-d", '{"tool":"filesystem.read","params":{"path":"/home/user/documents/notes.txt"}}',
    )  # fmt: skip
    assert json.loads(allowed) == {"allowed": True}
    denied = _curl(
        "-X", "POST", f"{seed_gw.url}/v1/evaluate", "-H", "Content-Type: application/json",
        "-d", '{"tool":"shell.exec","params":{"cmd":"rm -rf /"}}',
    )  # fmt: skip
    assert json.loads(denied) == {"allowed": False, "reason": "tool is explicitly denied"}
    not_listed = _curl(
        "-X", "POST", f"{seed_gw.url}/v1/evaluate", "-H", "Content-Type: application/json",
        "-d", '{"tool":"filesystem.read","params":{"path":"/vault/user_docs/readme.txt"}}',
    )  # fmt: skip
    assert json.loads(not_listed) == {"allowed": False, "reason": "path not in allowlist"}
    health = json.loads(_curl(f"{seed_gw.url}/health"))
    assert health["status"] == "ok" and health["total_requests"] >= 3
    stats = json.loads(_curl(f"{seed_gw.url}/v1/stats"))
    assert (stats["default_action"], stats["allowed_tools"], stats["denied_tools"]) == (
        "deny",
        2,
        2,
    )
    reload = _curl(
        "-X", "POST", f"{seed_gw.url}/v1/reload", "-H", "Authorization: Bearer s3cret-token"
    )  # fmt: skip
    assert json.loads(reload)["status"] == "reloaded"


def test_every_decision_is_one_valid_audit_line(seed_gw: GatewayProc) -> None:
    httpx.post(f"{seed_gw.url}/v1/evaluate", json={"tool": "process.spawn", "params": {}})
    # written by the gateway's audit thread just after the answer
    until(lambda: (seed_gw.audit_lines() or [{}])[-1].get("tool") == "process.spawn", 5, "the line")
    lines = seed_gw.audit_lines()
    assert lines and all(validate_line(line) == [] for line in lines)
    assert lines[-1]["tool"] == "process.spawn" and lines[-1]["allowed"] is False


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "E-JSON"),
        (b"[]", 400, "E-SCHEMA"),
        (b'{"tool": 5}', 400, "E-SCHEMA"),
        (b'{"tool": "x", "params": "/etc/shadow"}', 400, "E-SCHEMA"),
        (b"[" * 100_000, 413, "E-HTTP-BODY-TOO-LARGE"),
        (b'{"tool": "' + b"a" * 70_000 + b'"}', 413, "E-HTTP-BODY-TOO-LARGE"),
        (b"[" * 5000 + b"]" * 5000, 400, "E-JSON"),
        (b"\xff\xfe\x00", 400, "E-JSON"),
    ],
)
def test_malformed_and_oversized_bodies_are_refused(
    seed_gw: GatewayProc, body: bytes, status: int, code: str
) -> None:
    answer = httpx.post(
        f"{seed_gw.url}/v1/evaluate", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status and answer.json()["error"]["code"] == code


def test_an_oversized_chunked_body_is_cut_off(seed_gw: GatewayProc) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b"x" * 1024

    answer = httpx.post(f"{seed_gw.url}/v1/evaluate", content=chunks())
    assert answer.status_code == 413


def test_only_a_post_to_an_evaluate_path_skips_the_router(seed_gw: GatewayProc) -> None:
    body = {"tool": "shell.exec", "params": {}}
    assert httpx.get(f"{seed_gw.url}/v1/evaluate").status_code == 405
    assert httpx.put(f"{seed_gw.url}/v1/evaluate/mcp", json=body).status_code == 405
    assert httpx.post(f"{seed_gw.url}/v1/evaluate/", json=body).status_code in {307, 404}
    assert httpx.post(f"{seed_gw.url}/v1/Evaluate", json=body).status_code == 404
    assert httpx.post(f"{seed_gw.url}/health").status_code == 405
    answer = httpx.post(f"{seed_gw.url}/v1/evaluate?x=1", json=body)
    assert answer.json() == {"allowed": False, "reason": "tool is explicitly denied"}


def test_oversized_headers_and_a_garbage_request_line_get_400(seed_gw: GatewayProc) -> None:
    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", seed_gw.port), timeout=10) as s:
            s.sendall(request)
            return s.recv(4096)

    big = b"x-filler: " + b"a" * (17 * 1024) + b"\r\n"
    request = b"POST /v1/evaluate HTTP/1.1\r\nhost: x\r\n" + big + b"content-length: 2\r\n\r\n{}"
    assert raw(request).startswith(b"HTTP/1.1 400")
    assert raw(b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{seed_gw.url}/health").status_code == 200


def test_reload_refuses_a_wrong_or_missing_token(seed_gw: GatewayProc) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret-token"}):
        answer = httpx.post(f"{seed_gw.url}/v1/reload", headers=headers)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "E-FORBIDDEN"


def test_hot_reload_on_file_change_and_invalid_policies_keep_the_running_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "service-token").write_text("tok")
    with GatewayProc(tmp_path, SEED) as gw:
        url = f"{gw.url}/v1/evaluate"

        def verdict(tool: str) -> bool:
            return bool(httpx.post(url, json={"tool": tool, "params": {}}).json()["allowed"])

        assert not verdict("web.fetch")
        replacement = tmp_path / "tools.yaml.new"
        replacement.write_text(SEED.replace('"web.search"', '"web.fetch"'))
        replacement.rename(gw.policy)  # as editors save
        until(lambda: verdict("web.fetch"), 10, "the inotify reload")
        gw.policy.write_text("tools: {defualt: allow}\n")
        answer = httpx.post(f"{gw.url}/v1/reload", headers={"Authorization": "Bearer tok"})
        assert answer.status_code == 422
        assert answer.json()["error"]["diagnostics"][0]["code"] == "E-UNKNOWN-KEY"
        assert verdict("web.fetch") and not verdict("shell.exec")

        def reloads() -> list[dict[str, object]]:
            return [x for x in gw.audit_lines() if x["event"] == "gateway_reload"]

        until(lambda: reloads() and reloads()[-1]["accepted"] is False, 5, "the reload's line")
        assert [r["accepted"] for r in reloads()][:1] == [True]


def test_concurrent_reloads_during_traffic_never_fail_a_call(tmp_path: Path) -> None:
    (tmp_path / "service-token").write_text("tok")
    with GatewayProc(tmp_path, SEED) as gw:
        stop, errors = threading.Event(), []

        def reloader() -> None:
            with httpx.Client() as c:
                for i in range(30):
                    if stop.is_set():
                        return
                    gw.policy.write_text(SEED if i % 2 else "tools: [broken\n")
                    c.post(f"{gw.url}/v1/reload", headers={"Authorization": "Bearer tok"})

        threads = [threading.Thread(target=reloader) for _ in range(2)]
        for t in threads:
            t.start()
        with httpx.Client() as c:
            for _ in range(100):  # the seed policy allows 120 a minute
                a = c.post(f"{gw.url}/v1/evaluate", json={"tool": "shell.exec", "params": {}})
                if a.status_code != 200 or a.json() != {
                    "allowed": False,
                    "reason": "tool is explicitly denied",
                }:
                    errors.append(a.text)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []


def test_the_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    policy = "tools:\n  rate_limit: {requests_per_minute: 3}\n  allow: [{name: t}]\n"
    with GatewayProc(tmp_path, policy) as gw, httpx.Client() as c:
        answers = [
            c.post(f"{gw.url}/v1/evaluate", json={"tool": "t", "params": {}}) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[3].json() == {"allowed": False, "reason": "rate limit exceeded"}
        assert 1 <= int(answers[3].headers["retry-after"]) <= 60


def test_agent_tokens_are_required_and_name_the_agent_in_the_audit(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "alice").write_text("alice-token\n")
    (agents / "bob").write_text("bob-token\n")
    (agents / "blank").write_text("\n")
    env = {"AGENT_TOKENS_DIR": str(agents)}
    with GatewayProc(tmp_path, SEED, env=env) as gw, httpx.Client() as c:
        body = {"tool": "web.search", "params": {"q": "weather"}}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}):
            a = c.post(f"{gw.url}/v1/evaluate", json=body, headers=headers)
            assert a.status_code == 401 and a.json()["error"]["code"] == "E-GW-UNAUTHORIZED"
        ok = c.post(
            f"{gw.url}/v1/evaluate", json=body, headers={"Authorization": "Bearer bob-token"}
        )
        assert ok.json() == {"allowed": True}
        until(lambda: (gw.audit_lines() or [{}])[-1].get("agent") == "bob", 5, "bob's audit line")
        # a new agent's file counts from the next reload; a removed one stops counting
        (agents / "carol").write_text("carol-token")
        (agents / "bob").unlink()
        (tmp_path / "service-token").write_text("svc")
        gw_reload = c.post(f"{gw.url}/v1/reload", headers={"Authorization": "Bearer svc"})
        assert gw_reload.status_code == 403  # the service token is read at start only
        gw.stop()
        gw.start()
        assert c.post(f"{gw.url}/v1/reload", headers={"Authorization": "Bearer svc"}).is_success
        carol = c.post(
            f"{gw.url}/v1/evaluate", json=body, headers={"Authorization": "Bearer carol-token"}
        )
        assert carol.json() == {"allowed": True}
        (agents / "dave").write_text("dave-token")
        assert c.post(f"{gw.url}/v1/reload", headers={"Authorization": "Bearer svc"}).is_success
        dave = {"Authorization": "Bearer dave-token"}
        assert c.post(f"{gw.url}/v1/evaluate", json=body, headers=dave).status_code == 200
        bob = {"Authorization": "Bearer bob-token"}
        assert c.post(f"{gw.url}/v1/evaluate", json=body, headers=bob).status_code == 401


def test_an_unreadable_agent_tokens_dir_lets_no_agent_in(tmp_path: Path) -> None:
    env = {"AGENT_TOKENS_DIR": str(tmp_path / "missing")}
    with GatewayProc(tmp_path, SEED, env=env) as gw:
        a = httpx.post(f"{gw.url}/v1/evaluate", json={"tool": "web.search", "params": {}})
        assert a.status_code == 401


def test_an_mcp_tools_call_is_evaluated_as_it_is(seed_gw: GatewayProc) -> None:
    rpc = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "shell.exec", "arguments": {"cmd": "id"}},
    }
    a = httpx.post(f"{seed_gw.url}/v1/evaluate/mcp", json=rpc).json()
    assert a["allowed"] is False and a["id"] == 7
    assert a["jsonrpc_error"]["id"] == 7 and a["jsonrpc_error"]["error"]["code"] == -32001
    rpc["params"] = {"name": "web.search", "arguments": {"q": "weather"}}
    assert httpx.post(f"{seed_gw.url}/v1/evaluate/mcp", json=rpc).json() == {
        "allowed": True,
        "id": 7,
    }
    rpc["method"] = "tools/list"
    bad = httpx.post(f"{seed_gw.url}/v1/evaluate/mcp", json=rpc)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "E-SCHEMA"


def test_metrics_are_promtool_clean_with_bounded_tool_labels(seed_gw: GatewayProc) -> None:
    for i in range(20):
        httpx.post(f"{seed_gw.url}/v1/evaluate", json={"tool": f"made.up.{i}", "params": {}})
    text = httpx.get(f"{seed_gw.url}/metrics").text
    assert 'tool="other"' in text and "made.up" not in text
    assert "aitherfwd_gateway_decision_seconds_bucket" in text
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
