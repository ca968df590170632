"""The daemon config: strict TOML, roles by name or id, root always admin."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitherfwd.config import ConfigError, parse_config
from aitherfwd.roles import Authorizer

ROOT = Path(__file__).resolve().parents[2]
USERS = {"alice": 1000, "proxy": 1001}
GROUPS = {"aitherfwd": 900, "ops": 901}


def _parse(text: str) -> object:
    return parse_config(text, USERS.__getitem__, GROUPS.__getitem__)


def test_shipped_example_config_parses() -> None:
    cfg = parse_config(
        (ROOT / "packaging" / "aitherfwd.toml").read_text(), USERS.__getitem__, GROUPS.__getitem__
    )
    assert cfg.socket_mode == 0o660
    assert cfg.roles["read"].gids == frozenset({900})


def test_unknown_keys_and_unknown_users_are_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        _parse("[control]\nsockett = '/x'\n")
    with pytest.raises(ConfigError, match="no such user 'bob'"):
        _parse("[roles]\nadmin = {users = ['bob']}\n")
    with pytest.raises(ConfigError, match="octal"):
        _parse("[control]\nmode = 'rw'\n")


def test_roles_root_is_admin_and_admin_implies_all() -> None:
    cfg = parse_config(
        "[roles]\nread = {groups = ['aitherfwd']}\nadmin = {users = ['alice']}\n"
        "sandbox = {users = [1001]}\n",
        USERS.__getitem__,
        GROUPS.__getitem__,
    )
    auth = Authorizer(cfg.roles)
    assert auth.roles_of(0, 0, ()) == {"read", "report", "sandbox", "admin"}
    assert auth.roles_of(1000, 1000, ()) == {"read", "report", "sandbox", "admin"}
    assert auth.roles_of(2000, 2000, (900,)) == {"read"}
    assert auth.roles_of(1001, 1001, ()) == {"sandbox"}
    assert auth.roles_of(3000, 3000, ()) == set()


def test_conntrack_resync_interval_is_a_positive_number_of_seconds() -> None:
    cfg = parse_config(
        "[daemon]\nconntrack_resync_interval = 5\n", USERS.__getitem__, GROUPS.__getitem__
    )
    assert cfg.conntrack_resync_interval == 5.0
    with pytest.raises(ConfigError, match="conntrack_resync_interval"):
        _parse("[daemon]\nconntrack_resync_interval = 0\n")
