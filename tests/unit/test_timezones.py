"""Time windows in IANA time zones: shifted into the kernel's UTC at the zone's offset of
the moment, recompiled when the offset changes (DST), and the evaluator — reading the
zone's own clock — agrees with the kernel's UTC windows at every instant."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aitherfwd.adapters.files import load_policy
from aitherfwd.compiler import compile_policy
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.policy.model import Protocol, TimeWindow
from aitherfwd.policy.timezones import localize, next_change, shifted
from aitherfwd.testing import fake_daemon
from tests.unit.helpers import codes, ok

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "timezone_dst"
WINTER = datetime(2026, 3, 28, 12, tzinfo=UTC).timestamp()  # Saturday, CET (UTC+1)
SUMMER = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()  # Sunday, CEST (UTC+2)
SWITCH = datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()  # 02:00 CET → 03:00 CEST
MON, FRI = 1, 5
H = 3600


def test_a_zoned_window_parses_and_an_unknown_zone_is_a_located_error() -> None:
    p = ok(
        "rules:\n  - {name: r, time_window: {start: '08:00', end: '18:00', "
        "timezone: Europe/Berlin}, action: allow}\n"
    )
    w = p.rules[0].time_window
    assert w is not None and w.tz == "Europe/Berlin"
    utc = ok(
        "rules:\n  - {name: r, time_window: {start: '08:00', end: '18:00', "
        "timezone: Etc/UTC}, action: allow}\n"
    )
    assert utc.rules[0].time_window is not None and utc.rules[0].time_window.tz is None
    assert codes(
        "rules:\n  - {name: r, time_window: {start: '08:00', end: '18:00', "
        "timezone: Europe/Atlantis}, action: allow}\n"
    ) == ["E-TIMEZONE"]


def test_office_hours_in_berlin_are_07_to_17_utc_in_winter_and_06_to_16_in_summer() -> None:
    w = TimeWindow(frozenset({MON, FRI}), 8 * H, 18 * H, "Europe/Berlin")
    assert shifted(w, 1 * H) == TimeWindow(frozenset({MON, FRI}), 7 * H, 17 * H)
    assert shifted(w, 2 * H) == TimeWindow(frozenset({MON, FRI}), 6 * H, 16 * H)


def test_a_window_just_after_local_midnight_moves_to_the_previous_utc_day() -> None:
    w = TimeWindow(frozenset({MON}), 30 * 60, 2 * H, "Europe/Berlin")
    # Monday 00:30-02:00 CET is Sunday 23:30 - Monday 01:00 UTC: crosses midnight
    assert shifted(w, 1 * H) == TimeWindow(frozenset({0}), 23 * H + 30 * 60, 1 * H)
    # a zone west of UTC pushes it later the same day
    assert shifted(w, -5 * H) == TimeWindow(frozenset({MON}), 5 * H + 30 * 60, 7 * H)


def test_the_next_change_is_the_dst_transition() -> None:
    policy = load_policy(GOLDEN / "policy.tz.yaml").policy
    assert policy is not None
    assert next_change(policy, WINTER) == SWITCH
    after = next_change(policy, SUMMER)
    assert after == datetime(2026, 10, 25, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("season", "now"), [("winter", WINTER), ("summer", SUMMER)])
def test_compiled_ruleset_matches_golden_in_each_season(season: str, now: float) -> None:
    policy = load_policy(GOLDEN / "policy.tz.yaml").policy
    assert policy is not None
    out = compile_policy(policy, now).render_json()
    expected = GOLDEN / f"expected-{season}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(out)
    assert out == expected.read_text(), f"{season}: compiler output changed"
    with pytest.raises(ValueError, match="pass now"):
        compile_policy(policy)


def test_evaluator_on_local_time_agrees_with_the_kernels_utc_windows_around_dst() -> None:
    """At every quarter hour of the week around the transition, the evaluator (zone clock)
    and the kernel's view (the policy localized at that instant, in UTC) agree."""
    policy = load_policy(GOLDEN / "policy.tz.yaml").policy
    assert policy is not None
    local = Evaluator(policy)
    source = ipaddress.ip_address("10.77.0.5")
    for step in range(-4 * 24 * 4, 4 * 24 * 4):
        now = SWITCH + step * 900
        kernel = Evaluator(localize(policy, now))
        for port in (443, 9000):
            req = Request(source, Protocol.TCP, port)
            assert local.evaluate(req, now).verdict == kernel.evaluate(req, now).verdict, (
                datetime.fromtimestamp(now, UTC),
                port,
            )


def test_the_daemon_recompiles_when_the_offset_changes(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, (GOLDEN / "policy.tz.yaml").read_text())
    fake.clock.wall = SWITCH - 60
    s = fake.services

    def hours() -> list[object]:
        assert fake.kernel.table is not None
        return [
            e["match"]["right"]
            for r in fake.kernel.table.rules.get("r_office_hours", [])
            for e in r["expr"]
            if "match" in e and e["match"]["left"] == {"meta": {"key": "hour"}}
        ]

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            assert hours() == [{"range": [7 * H, 17 * H - 1]}]
            assert not await s.generations.follow_time_zones()  # not yet
            fake.clock.advance(120)
            assert await s.generations.follow_time_zones()
            assert hours() == [{"range": [6 * H, 16 * H - 1]}]
            assert s.generations.current().number == 2
            assert not await s.generations.follow_time_zones()  # next: October
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        s.ports.store.close()
    lines = fake.audit_path.read_text().splitlines()
    assert any('"trigger":"timezone"' in x for x in lines)


def test_a_refused_time_zone_reload_keeps_the_generation_and_is_tried_again(
    tmp_path: Path,
) -> None:
    text = (GOLDEN / "policy.tz.yaml").read_text()
    fake = fake_daemon(tmp_path, text)
    fake.clock.wall = SWITCH - 60
    s = fake.services

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            fake.policy_path.write_text("rules: [")  # broken when the offset changes
            fake.clock.advance(120)
            assert not await s.generations.follow_time_zones()
            assert s.generations.current().number == 1
            fake.policy_path.write_text(text)
            fake.clock.advance(30)
            assert not await s.generations.follow_time_zones()  # not before the retry
            fake.clock.advance(31)
            assert await s.generations.follow_time_zones()
            assert s.generations.current().number == 2
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        s.ports.store.close()
