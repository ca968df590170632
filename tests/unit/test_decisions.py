"""Decision records (docs/audit.md): what the kernel reports and what /v1/evaluate answers
become OCSF Network Activity lines with the seed's fields, sampled per rule."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

from aitherfwd.adapters.audit import encode
from aitherfwd.adapters.control_server import HttpRequest, Peer
from aitherfwd.audit_check import validate_line
from aitherfwd.daemon.api import Api
from aitherfwd.decisions import Sampler, from_denial
from aitherfwd.dynamic.detect import Denial
from aitherfwd.policy.parse import parse_policy
from aitherfwd.roles import Authorizer
from aitherfwd.testing import fake_daemon

POLICY = """\
zones:
  - {name: internal, cidrs: [10.0.0.0/8]}
  - {name: external, cidrs: [0.0.0.0/0]}
services:
  Secrets: {ports: [8111]}
rules:
  - {name: external_deny_sensitive, zone: external, dest_services: [Secrets], action: deny}
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
NOW = 1_773_153_131.0  # 2026-03-10T14:32:11Z, the seed's example


def _policy() -> Any:
    p = parse_policy(POLICY, "p.yaml").policy
    assert p is not None
    return p


def test_a_kernel_denial_is_an_ocsf_network_activity_line_with_the_seed_fields() -> None:
    d = Denial(
        ipaddress.ip_address("203.0.113.42"),
        6,
        8111,
        "denied",
        "external_deny_sensitive",
        ipaddress.ip_address("10.77.1.1"),
        40000,
    )
    line = json.loads(encode(NOW, from_denial(d, _policy())))
    assert validate_line(line) == []
    assert {k: line[k] for k in ("timestamp", "verdict", "rule_name", "zone", "source_ip")} == {
        "timestamp": "2026-03-10T14:32:11.000Z",
        "verdict": "deny",
        "rule_name": "external_deny_sensitive",
        "zone": "external",
        "source_ip": "203.0.113.42",
    }
    assert line["dest_service"] == "Secrets" and line["latency_us"] is None
    assert line["reason"] == "rule 'external_deny_sensitive' denies tcp/8111 from zone external"
    assert line["event"] == "decision" and line["action"] == "denied"
    assert (line["class_uid"], line["category_uid"], line["activity_id"]) == (4001, 4, 5)
    assert line["type_uid"] == 400105 and line["time"] == 1_773_153_131_000
    assert line["src_endpoint"] == {"ip": "203.0.113.42", "port": 40000}
    assert line["dst_endpoint"] == {"ip": "10.77.1.1", "port": 8111}
    assert line["connection_info"]["protocol_name"] == "tcp"
    assert (line["disposition"], line["action_id"]) == ("Blocked", 2)
    assert line["metadata"]["product"]["name"] == "aitherfwd"


def test_a_default_drop_names_no_rule_and_the_default_policy() -> None:
    d = Denial(ipaddress.ip_address("10.1.2.3"), 17, 9999, "denied", "default")
    rec = from_denial(d, _policy())
    assert (rec.rule_name, rec.zone, rec.verdict) == (None, "internal", "deny")
    assert rec.reason == "no rule matched; default policy deny"


def test_a_tampered_ocsf_attribute_fails_validation() -> None:
    d = Denial(ipaddress.ip_address("10.1.2.3"), 6, 22, "allowed", "web")
    line = json.loads(encode(NOW, from_denial(d, _policy())))
    assert line["action"] == "allowed" and line["disposition"] == "Allowed"
    assert validate_line(line) == []
    assert validate_line({**line, "class_uid": 2004}) != []
    assert validate_line({**line, "disposition": "Blocked"}) != []


def test_the_sampler_bounds_each_rule_and_spares_the_others() -> None:
    s = Sampler(10)
    flood = sum(s.take("denied a", NOW + i / 1000) for i in range(1000))  # 1 s of 1000/s
    assert 10 <= flood <= 20  # the burst, then the rate
    assert all(s.take("denied b", NOW + 1) for _ in range(10))  # b's bucket is its own
    assert Sampler(0).take("x", NOW) is False


def _api_call(api: Api, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    return asyncio.run(api(HttpRequest("POST", "/v1/evaluate", {}, {}, raw, Peer(1, 0, 0, ()))))


def test_evaluate_with_audit_true_writes_one_decision_with_its_latency(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    s = fake.services

    async def start() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
        finally:
            task.cancel()

    try:
        asyncio.run(start())
        api = Api(s, Authorizer({}))
        quiet = _api_call(api, {"source_ip": "203.0.113.42", "dest_port": 8111})
        answer = _api_call(
            api,
            {"source_ip": "203.0.113.42", "dest_port": 8111, "audit": True, "expect": "denied"},
        )
    finally:
        s.ports.store.close()
    body: Any = answer.body
    assert answer.status == 200 and "expected" not in quiet.body, body
    assert body["rule"] == body["rule_name"] == "external_deny_sensitive"
    assert body["expected"] is True
    lines = [json.loads(x) for x in fake.audit_path.read_text().splitlines()]
    decisions = [x for x in lines if x["event"] == "decision"]
    assert len(decisions) == 1  # only the request that asked
    (rec,) = decisions
    assert validate_line(rec) == []
    assert rec["origin"] == "evaluate" and rec["dest_service"] == "Secrets"
    assert rec["latency_us"] == body["latency_us"]


def test_a_forward_denial_is_a_forward_decision_naming_the_published_port_and_container() -> None:
    d = Denial(
        ipaddress.ip_address("203.0.113.42"),
        6,
        8111,
        "denied",
        "external_deny_sensitive",
        ipaddress.ip_address("172.17.0.2"),
        40000,
        forward=True,
    )
    line = json.loads(encode(NOW, from_denial(d, _policy())))
    assert validate_line(line) == []
    assert (line["direction"], line["dest_port"], line["dest_ip"]) == (
        "forward",
        8111,
        "172.17.0.2",
    )
    assert line["dest_service"] == "Secrets" and line["zone"] == "external"
    assert line["reason"] == "rule 'external_deny_sensitive' denies tcp/8111 from zone external"
    assert line["connection_info"]["direction_id"] == 3  # OCSF: Lateral
    out = Denial(ipaddress.ip_address("172.17.0.2"), 6, 443, "egress", "default", forward=True)
    rec = from_denial(out, _policy())
    assert (rec.direction, rec.zone, rec.dest_service) == ("forward", None, None)
    assert rec.reason.startswith("from containers: outbound tcp/443")
