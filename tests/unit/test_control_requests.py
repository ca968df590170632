"""What the daemon makes of hostile requests, through the API on fakes (issue 14): refusals
aggregated per peer and kept out of the audit trail (9), deep JSON a 400 without a
traceback (15), strict parsing of bodies (18), and the config's control-socket budgets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.control_server import HttpRequest, Peer
from aitherfwd.audit_records import AuditRecord, RequestRejected
from aitherfwd.config import ConfigError, parse_config
from aitherfwd.control.jsonbody import decode
from aitherfwd.control.limits import ControlLimits
from aitherfwd.control.sandbox import parse_grant
from aitherfwd.control.schema import parse_block, parse_network
from aitherfwd.daemon.api import Api
from aitherfwd.daemon.rejections import Rejections
from aitherfwd.errors import RequestError
from aitherfwd.roles import Authorizer, RoleMembers
from aitherfwd.testing import FakeDaemon, fake_daemon

POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
"""
READER, STRANGER = 1001, 1005


class Lines:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, now: float, record: AuditRecord) -> None:
        self.records.append(record)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = fake_daemon(tmp_path, POLICY)
    yield d
    d.services.ports.store.close()


def api_of(fake: FakeDaemon, noise: Lines) -> Api:
    roles = {"read": RoleMembers(uids=frozenset({READER}))}
    return Api(fake.services, Authorizer(roles), noise=noise, reject_interval=10.0)


def call(api: Api, method: str, path: str, body: bytes = b"", uid: int = 0) -> Any:
    request = HttpRequest(method, path, {}, {}, body, Peer(4242, uid, uid, ()))
    return asyncio.run(api(request))


def trail(fake: FakeDaemon) -> list[dict[str, Any]]:
    if not fake.audit_path.exists():
        return []
    return [json.loads(line) for line in fake.audit_path.read_text().splitlines()]


def test_a_flood_of_rejected_requests_writes_one_line_per_peer_per_interval(
    fake: FakeDaemon,
) -> None:
    noise = Lines()
    api = api_of(fake, noise)
    junk = "/v1/" + "x" * 5000
    for _ in range(3000):
        assert call(api, "GET", junk, uid=READER).status == 404
    fake.clock.advance(11)
    api.rejections.flush(fake.clock.now())
    call(api, "GET", junk, uid=READER)
    api.rejections.flush(fake.clock.now(), final=True)
    lines = [r for r in noise.records if isinstance(r, RequestRejected)]
    assert [r.count for r in lines] == [1, 2999, 1]
    assert all(len(r.path) <= 128 and len(r.reason) <= 200 for r in lines)
    assert [e for e in trail(fake) if e["event"] == "request_rejected"] == []


def test_access_denials_stay_in_the_audit_trail_aggregated_per_peer(fake: FakeDaemon) -> None:
    api = api_of(fake, Lines())
    for _ in range(500):
        assert call(api, "POST", "/v1/blocks", b'{"address": "10.1.1.1"}', uid=READER).status == 403
    assert api.admit(Peer(1, STRANGER, STRANGER, ())) is None  # refused at accept
    api.rejections.flush(fake.clock.now(), final=True)
    denials = [e for e in trail(fake) if e["event"] == "access_denied"]
    assert [(d["actor"]["uid"], d["count"]) for d in denials] == [
        (READER, 1),
        (STRANGER, 1),
        (READER, 499),
    ]
    assert denials[1]["role"] == "any"


def test_peers_beyond_the_followed_ones_share_one_line() -> None:
    noise = Lines()
    rejections = Rejections(Lines(), noise, interval=10.0, max_peers=4)
    for uid in range(100):
        record = RequestRejected("GET", "/x", 404, "E-NOT-FOUND", "no", {"uid": uid})
        rejections.rejected(0.0, record)
    rejections.flush(20.0)
    assert len(noise.records) == 6  # four followed uids, the overflow's first and its count
    assert sum(r.count for r in noise.records if isinstance(r, RequestRejected)) == 100


def test_head_refusals_are_audited_like_handler_refusals(fake: FakeDaemon) -> None:
    noise = Lines()
    api = api_of(fake, noise)
    reader = Peer(1, READER, READER, ())
    with pytest.raises(RequestError) as denied:
        api.head(reader, "POST", "/v1/blocks")
    assert api.head(reader, "POST", "/v1/evaluate") == ControlLimits().body_bytes_read
    assert api.head(Peer(1, 0, 0, ()), "POST", "/v1/blocks") == 32 << 20
    assert api.head(Peer(1, 0, 0, ()), "POST", "/v1/reload") == 1 << 20
    with pytest.raises(RequestError):
        api.head(reader, "GET", "/nowhere")
    api.rejections.flush(0, final=True)
    assert denied.value.code == "E-FORBIDDEN"
    assert [e["event"] for e in trail(fake)] == ["access_denied"]
    assert [r.code for r in noise.records if isinstance(r, RequestRejected)] == ["E-NOT-FOUND"]


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_is_a_400_without_a_traceback(
    fake: FakeDaemon, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    api = api_of(fake, Lines())
    with caplog.at_level(logging.DEBUG):
        response = call(api, "POST", "/v1/evaluate", b"[" * depth + b"]" * depth)
    assert (response.status, response.body["error"]["code"]) == (400, "E-JSON")
    assert "deeper than 32" in response.body["error"]["message"]
    assert not [r for r in caplog.records if r.exc_info]


def test_json_nesting_up_to_the_limit_is_parsed_and_strings_do_not_count() -> None:
    nested: Any = []
    for _ in range(31):
        nested = [nested]
    assert decode(b"[" * 32 + b"]" * 32) == nested
    assert decode(json.dumps({"a": "[" * 100, "b": '\\"[' * 50}).encode())["a"] == "[" * 100
    with pytest.raises(RequestError, match="deeper than 32"):
        decode(b"[" * 33 + b"]" * 33)


def test_a_duplicate_json_key_is_a_located_400() -> None:
    with pytest.raises(RequestError) as caught:
        decode(b'[{"a": 1},\n {"a": 2, "ttl": "1h",\n  "a": 3}]')
    assert caught.value.code == "E-JSON"
    assert "line 3 column 3" in caught.value.message and '"a"' in caught.value.message


@pytest.mark.parametrize("ttl", ["\u0661\u0665m", "\u0661\u0665", "\uff11\uff15m"])
def test_ttls_in_non_ascii_digits_are_refused(ttl: str) -> None:
    with pytest.raises(RequestError) as block:
        parse_block({"address": "10.0.0.1", "ttl": ttl})
    with pytest.raises(RequestError) as grant:
        parse_grant({"destination": "10.0.0.1", "ttl": ttl})
    assert block.value.code == grant.value.code == "E-TTL"


@pytest.mark.parametrize("text", ["10.0.0.0/032", "10.0.0.0/08", "fd77::/064", "10.0.0.0/+8"])
def test_prefix_lengths_with_leading_zeros_or_signs_are_refused(text: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_network(text)
    assert caught.value.code == "E-ADDRESS"
    assert str(parse_network("10.0.0.0/8")) == "10.0.0.0/8"


def test_control_budgets_are_read_from_the_config_and_checked() -> None:
    def ids(name: str) -> int:
        return 0

    cfg = parse_config(
        "[control]\nmax_connections = 100\nconnections_per_uid = 4\nbody_bytes_read = 4096\n",
        ids,
        ids,
    )
    assert (cfg.limits.max_connections, cfg.limits.connections_per_uid) == (100, 4)
    assert cfg.limits.body_limit("read") == 4096
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "[control]\nmax_connections = 10\nadmin_connections = 10\n"
            "body_bytes_in_flight = 33554432\n",
            ids,
            ids,
        )
    text = str(caught.value)
    assert "control.admin_connections: 10 must be below max_connections" in text
    assert "control.body_bytes_in_flight: 33554432 must be at least body_bytes_admin" in text
