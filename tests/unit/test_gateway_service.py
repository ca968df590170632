"""The gateway service through fakes: audit lines, reloads that keep the running policy,
agent tokens, and the network grant an allowed call waits for."""

from __future__ import annotations

import asyncio

from aitherfwd import audit_records as ar
from aitherfwd.audit_check import validate_line
from aitherfwd.gateway.evaluate import Call, ReasonClass
from aitherfwd.gateway.network import Destination
from tests.unit.gateway_helpers import SEED_POLICY, FakeGrants, gateway

SEED = SEED_POLICY.read_text()
FETCH = """\
tools:
  allow:
    - name: web.fetch
      network: {param: url, ports: [443, 8443], ttl: 90s}
"""


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_every_decision_writes_one_valid_audit_line_with_the_seeds_fields() -> None:
    gw, audit, _ = gateway(SEED)
    run(gw.decide(Call("shell.exec", {"cmd": "rm -rf /"})))
    run(gw.decide(Call("filesystem.read", {"path": "/home/user/documents/a"})))
    assert len(audit.records) == 2
    for record in audit.records:
        line = ar.as_json(record, 1_800_000_000.0)
        assert validate_line(line) == []
        assert {"timestamp", "tool", "params", "allowed", "reason"} <= set(line)
    first = ar.as_json(audit.records[0], 0)
    assert first["tool"] == "shell.exec" and first["params"] == {"cmd": "rm -rf /"}
    assert first["allowed"] is False and first["reason"] == "tool is explicitly denied"


def test_audit_lines_cut_huge_parameter_values() -> None:
    gw, audit, _ = gateway("tools: {default: allow}\n")
    run(gw.decide(Call("t", {"blob": "x" * 10_000})))
    kept = ar.as_json(audit.records[0], 0)["params"]
    assert isinstance(kept, dict) and len(str(kept["blob"])) <= 513


def test_an_invalid_reload_keeps_the_running_policy_and_says_why() -> None:
    gw, audit, _ = gateway(SEED)
    gw.load_text["text"] = "tools: {defualt: allow}\n"  # type: ignore[attr-defined]
    result = gw.reload("api")
    assert not result.ok and gw.policy.allowed_entry("web.search") is not None
    assert gw.last_errors[0]["code"] == "E-UNKNOWN-KEY"
    assert not run(gw.decide(Call("anything"))).allowed  # type: ignore[attr-defined]
    rejected = audit.records[0]
    assert isinstance(rejected, ar.GatewayReloaded) and not rejected.accepted
    gw.load_text["text"] = "tools: {default: allow}\n"  # type: ignore[attr-defined]
    assert gw.reload("inotify").ok and run(gw.decide(Call("anything"))).allowed  # type: ignore[attr-defined]
    assert gw.stats.reloads == {"accepted": 1, "rejected": 1}


def test_reload_over_http_needs_the_service_token_and_never_works_without_one() -> None:
    gw, _, _ = gateway(SEED)
    assert not gw.may_reload(None) and not gw.may_reload("")  # the seed allowed these
    gw2, _, _ = gateway(SEED, service_token="s3cret")  # noqa: S106
    assert gw2.may_reload("s3cret") and not gw2.may_reload("s3cre") and not gw2.may_reload(None)


def test_agent_tokens_name_the_agent_and_refuse_everyone_else() -> None:
    gw, _, _ = gateway(SEED, agent_tokens={"alice": "tok-a", "bob": "tok-b"})
    assert gw.agent_for("tok-a") == "alice" and gw.agent_for("tok-b") == "bob"
    assert gw.agent_for("tok-c") is None and gw.agent_for(None) is None and gw.agent_for("") is None
    assert gw.stats.unauthorized == 3
    open_gw, _, _ = gateway(SEED)
    assert open_gw.agent_for(None) == "anonymous"


def test_an_allowed_network_call_is_answered_after_its_grant_with_the_agent_as_scope() -> None:
    grants = FakeGrants()
    gw, audit, _ = gateway(FETCH, grants=grants)
    d = run(gw.decide(Call("web.fetch", {"url": "https://api.example.com/x"}, "alice")))
    assert d.allowed  # type: ignore[attr-defined]
    assert grants.granted == [(Destination("api.example.com", 443, 90), "alice")]
    line = ar.as_json(audit.records[0], 0)
    assert line["destination"] == "api.example.com:443"


def test_a_refused_grant_denies_the_call() -> None:
    gw, _, _ = gateway(FETCH, grants=FakeGrants(refuse="E-GRANT-REFUSED: known_bad"))
    d = run(gw.decide(Call("web.fetch", {"url": "https://203.0.113.66/"})))
    assert not d.allowed  # type: ignore[attr-defined]
    assert d.reason == "network grant refused: E-GRANT-REFUSED: known_bad"  # type: ignore[attr-defined]
    assert gw.stats.grants_refused == 1


def test_a_denied_call_asks_for_no_grant() -> None:
    grants = FakeGrants()
    gw, _, _ = gateway(FETCH, grants=grants)
    for url in ("https://api.example.com:22/", "https://user:pw@example.com/", "not a url", "x"):
        d = run(gw.decide(Call("web.fetch", {"url": url})))
        assert d.reason_class is ReasonClass.NETWORK, url  # type: ignore[attr-defined]
    assert grants.granted == []


def test_without_a_daemon_a_network_call_is_denied() -> None:
    gw, _, _ = gateway(FETCH)
    d = run(gw.decide(Call("web.fetch", {"url": "https://example.com/"})))
    assert not d.allowed  # type: ignore[attr-defined]


def test_metrics_labels_stay_bounded_by_the_policy() -> None:
    gw, _, _ = gateway(SEED)
    for i in range(50):
        run(gw.decide(Call(f"random.tool.{i}")))
    tools = {tool for tool, _, _ in gw.stats.decisions}
    assert tools == {"other"}
