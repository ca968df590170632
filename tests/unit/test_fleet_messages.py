"""The fleet's wire format and its `[fleet]` config, as an attacker on the bus and as an
operator with typos would meet them."""

from __future__ import annotations

import json

import pytest

from aitherfwd.config import ConfigError, parse_config
from aitherfwd.fleet import batch as fb
from aitherfwd.fleet import messages as m

NOW = 1_700_000_000.0


def _decision(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "id": "web-1.0123456789abcdef",
        "op": "block",
        "key": "203.0.113.7",
        "origin": "web-1",
        "at": NOW,
        "expires_at": NOW + 900,
        "reason": "port scan",
    }
    body.update(over)
    return body


def test_a_decision_survives_the_round_trip() -> None:
    d = m.Decision("web-1.00ff00ff", m.BLOCK, "2001:db8::/64", "web-1", NOW, None, "x")
    assert m.decode(m.encode(d)) == d
    t = m.SharedThreat("web-1.00ff00ff", "web-1", NOW, "SCAN", "192.0.2.1", "low")
    assert m.decode(m.encode(t)) == t


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"v": 2}, "version-1"),
        ({"op": "flush"}, "op must be"),
        ({"key": "203.0.113.7; flush ruleset"}, "address or prefix"),
        ({"key": "10.0.0.1/8"}, "address or prefix"),  # host bits set
        ({"key": "::ffff:10.0.0.1"}, "IPv4-mapped"),
        ({"key": "2001:DB8::1"}, "not canonical"),
        ({"origin": "a.b"}, "origin"),
        ({"origin": "web-2"}, "does not name its origin"),
        ({"id": "web-1.xyz"}, "id"),
        ({"expires_at": float("nan")}, "UNIX time"),
        ({"expires_at": 1e300}, "out of range"),
        ({"at": True}, "UNIX time"),
        ({"reason": "x\x1b[31m"}, "printable"),
        ({"reason": "x" * 300}, "printable"),
    ],
)
def test_malformed_decisions_are_refused(override: dict[str, object], why: str) -> None:
    with pytest.raises(m.BadMessage, match=why):
        m.decode(json.dumps(_decision(**override)).encode())


def test_oversized_deep_and_garbage_messages_are_refused() -> None:
    for data in (b"x" * 5000, b"[" * 3000 + b"]" * 3000, b"\xff\xfe", b"null", b"{}"):
        with pytest.raises(m.BadMessage):
            m.decode(data)


def test_the_memory_of_message_ids_is_bounded_and_expiry_is_absolute() -> None:
    seen = m.Seen(size=2)
    d = m.decode(json.dumps(_decision()).encode())
    seen.add(d.id)
    assert d.id in seen
    seen.add("a.11111111")
    seen.add("a.22222222")  # the oldest id is forgotten: memory is bounded
    assert d.id not in seen
    assert not fb.expired(d, NOW + 899) and fb.expired(d, NOW + 900)


def test_subjects_keep_one_decision_per_host_and_address() -> None:
    assert m.decision_subject("prod", "web-1", "10.0.0.1") == "afw.prod.d.web-1.10_0_0_1"
    assert m.decision_subject("prod", "web-1", "2001:db8::/64") == "afw.prod.d.web-1.2001:db8::/64"


def _cfg(text: str, hostname: str = "box.example.org") -> object:
    return parse_config(text, lambda _n: 0, lambda _n: 0, "aitherfwd.toml", hostname)


def test_the_fleet_config_is_off_when_absent_and_read_when_present() -> None:
    assert _cfg("").fleet is None  # type: ignore[attr-defined]
    cfg = _cfg('[fleet]\nservers = ["nats://10.0.0.5:4222"]\nname = "prod"\n')
    fleet = cfg.fleet  # type: ignore[attr-defined]
    assert fleet.host == "box" and fleet.share == {"blocks"} and fleet.backlog == 100_000
    assert fleet.replicas == 1
    cfg = _cfg(
        '[fleet]\nservers = ["nats://a:4222", "tls://b:4222"]\nname = "prod"\nhost = "web-1"\n'
        'share = ["blocks", "threats", "policy"]\ncreds = "/etc/aitherfwd/fleet.creds"\n'
    )
    assert cfg.fleet.share == {"blocks", "threats", "policy"}  # type: ignore[attr-defined]


def test_fleet_config_mistakes_are_all_reported_with_their_lines() -> None:
    text = (
        "[fleet]\n"
        'servers = ["http://x:80"]\n'
        'name = "prod.eu"\n'
        'share = ["blocks", "secrets"]\n'
        'user = "u"\n'
        'creds = "relative.creds"\n'
        "backlog = 5\n"
        "replicas = 7\n"
        "shares = []\n"
    )
    with pytest.raises(ConfigError) as err:
        _cfg(text)
    message = err.value.message
    for expected in (
        "aitherfwd.toml:2:1: error[E-CONFIG-VALUE] fleet.servers[0]",
        "aitherfwd.toml:3:1: error[E-CONFIG-VALUE] fleet.name",
        "aitherfwd.toml:4:1: error[E-CONFIG-VALUE] fleet.share: unknown 'secrets'",
        "aitherfwd.toml:5:1: error[E-CONFIG-VALUE] fleet.user: user and password go together",
        "aitherfwd.toml:6:1: error[E-CONFIG-TYPE] fleet.creds",
        "aitherfwd.toml:7:1: error[E-CONFIG-RANGE] fleet.backlog",
        "aitherfwd.toml:8:1: error[E-CONFIG-RANGE] fleet.replicas",
        "aitherfwd.toml:9:1: error[E-CONFIG-UNKNOWN-KEY] fleet.shares",
    ):
        assert expected in message, message


def test_a_fleet_config_without_the_nats_client_is_a_clear_error_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aitherfwd.adapters import natsbus  # noqa: PLC0415
    from aitherfwd.daemon import main  # noqa: PLC0415
    from aitherfwd.errors import AitherError  # noqa: PLC0415

    cfg = _cfg('[fleet]\nservers = ["nats://10.0.0.5:4222"]\nname = "prod"\n')
    assert main._bus(cfg) is not None  # type: ignore[arg-type]  # nats-py is in the dev extra
    monkeypatch.setattr(natsbus, "available", lambda: False)
    with pytest.raises(AitherError) as err:
        main._bus(cfg)  # type: ignore[arg-type]
    assert err.value.code == "E-FLEET-NO-CLIENT" and err.value.exit_code == 64
    assert "pip install 'aitherfwd[fleet]'" in err.value.message
    assert main._bus(_cfg("")) is None  # type: ignore[arg-type]
