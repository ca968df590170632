"""Sandbox grants persist in the state store (schema v3, added to older databases on
open), and the sandbox role's max_ttl comes from the daemon config."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aitherfwd.adapters.store import Store
from aitherfwd.adapters.store_schema import SCHEMA_VERSION
from aitherfwd.client import scope_from_headers
from aitherfwd.codes import http_status
from aitherfwd.config import ConfigError, parse_config
from aitherfwd.control.sandbox import parse_grant
from aitherfwd.egress.sandbox import Grant
from aitherfwd.errors import RequestError

NOW = 1_800_000_000.0


def test_grants_round_trip_and_expired_ones_are_dropped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_grants(
        [
            Grant("198.18.0.1", NOW + 60, "sandbox-alice", (443,), NOW, "api.example", 1000),
            Grant("2001:db8::/64", NOW + 5, "sandbox-bob", (), NOW),
        ]
    )
    store.close()
    store = Store(tmp_path)
    loaded = store.load_grants(NOW + 10)
    assert [(g.key, g.ports, g.host, g.uid) for g in loaded] == [
        ("198.18.0.1", (443,), "api.example", 1000)
    ]
    store.end_grants(["198.18.0.1"])
    assert store.load_grants(NOW) == []


def test_a_version_2_database_gains_the_grants_table(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute(
        "CREATE TABLE blocks (key TEXT PRIMARY KEY, expires_at REAL, reason TEXT NOT "
        "NULL, source TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO blocks VALUES ('203.0.113.7', NULL, 'kept', 'manual', 1.0)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.recovered is None
    assert [b.key for b in store.load_blocks(NOW)] == ["203.0.113.7"]
    assert store.load_grants(NOW) == []
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_the_sandbox_role_takes_a_max_ttl_and_other_roles_do_not() -> None:
    cfg = parse_config("[roles]\nsandbox = {users = [1001], max_ttl = '30m'}\n", int, int)
    assert cfg.roles["sandbox"].max_ttl == 1800
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config("[roles]\nread = {users = [1], max_ttl = '1h'}\n", int, int)
    with pytest.raises(ConfigError, match="max_ttl"):
        parse_config("[roles]\nsandbox = {max_ttl = 'soon'}\n", int, int)


def test_grant_requests_are_checked_strictly() -> None:
    spec = parse_grant({"destination": "API.Example.com", "ttl": "1h", "ports": [443, 443]})
    assert spec.host == "api.example.com" and spec.ttl == 3600 and spec.ports == (443,)
    assert parse_grant({"destination": "::ffff:198.18.0.1"}).network is not None
    assert parse_grant({"destination": "198.18.0.0/24", "ports": [443]}).ports == (443,)
    for body in (
        {"destination": "198.18.0.1", "scope": "bad scope!"},
        {"destination": "198.18.0.1", "ttl": "soon"},
        {"destination": "198.18.0.1/8"},  # host bits
        {"destination": "not a host"},
        {"destination": "198.18.0.1", "extra": 1},
    ):
        with pytest.raises(RequestError) as exc:
            parse_grant(body)
        assert http_status(exc.value.code) == 400, body


def test_the_agent_scope_header_convention() -> None:
    assert scope_from_headers({"x-agent-scope": " sandbox-alice "}) == "sandbox-alice"
    assert scope_from_headers({"X-Agent-Scope": "sandbox-"}) is None
    assert scope_from_headers({"X-Agent-Scope": "admin"}) is None
    assert scope_from_headers({"X-Agent-Scope": "sandbox-a b"}) is None
    assert scope_from_headers({"Host": "example"}) is None
