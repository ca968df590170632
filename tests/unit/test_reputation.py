"""The reputation ladder with a fake clock: decay, threshold, expiry, escalation."""

from __future__ import annotations

import ipaddress

from aitherfwd.clock import FakeClock
from aitherfwd.dynamic.reputation import (
    Offender,
    ReputationSettings,
    Severity,
    blocked,
    offender_key,
    step,
)

S = ReputationSettings(
    threshold=5, temp_block=900, permanent_after=3, memory=7 * 86_400, decay_half_life=3600
)


def _events(
    off: Offender | None, n: int, clock: FakeClock, severity: Severity = Severity.LOW
) -> tuple[Offender, list[object]]:
    decisions = []
    for _ in range(n):
        off, d = step(off, severity, clock.now(), S)
        decisions.append(d)
        clock.advance(1)
    assert off is not None
    return off, decisions


def test_one_event_raises_the_score_and_does_nothing_else() -> None:
    off, decision = step(None, Severity.LOW, 1000.0, S)
    assert off.score == 1 and decision is None and not blocked(off, 1000.0)


def test_fifth_threat_event_blocks_for_fifteen_minutes() -> None:
    clock = FakeClock()
    off, decisions = _events(None, 5, clock)
    assert decisions[:4] == [None] * 4
    d = decisions[4]
    assert d is not None and d.kind == "temporary" and d.ttl == 900  # type: ignore[attr-defined]
    assert off.score == 0 and blocked(off, clock.now())
    clock.advance(900)
    assert not blocked(off, clock.now())


def test_events_while_blocked_are_counted_but_do_not_escalate() -> None:
    clock = FakeClock()
    off, _ = _events(None, 5, clock)
    off, decisions = _events(off, 20, clock)
    assert decisions == [None] * 20 and len(off.blocks) == 1 and off.events == 25


def test_score_decays_with_the_half_life() -> None:
    clock = FakeClock()
    off, _ = _events(None, 4, clock)
    clock.advance(3600 - 4)
    off2, d = step(off, Severity.LOW, clock.now(), S)
    assert d is None and 2.9 < off2.score < 3.1  # 4 halved, plus 1


def test_high_severity_blocks_at_once() -> None:
    _, d = step(None, Severity.HIGH, 0.0, S)
    assert d is not None and d.kind == "temporary"


def test_third_block_within_memory_is_permanent_and_old_blocks_are_forgotten() -> None:
    clock = FakeClock()
    off: Offender | None = None
    kinds = []
    for _ in range(3):
        off, decisions = _events(off, 5, clock)
        kinds.append(decisions[-1].kind)  # type: ignore[union-attr]
        clock.advance(901)
    assert kinds == ["temporary", "temporary", "permanent"]
    assert off is not None and blocked(off, clock.now() + 10**9)
    clock2 = FakeClock()
    fresh, _ = _events(None, 5, clock2)
    clock2.advance(901)
    fresh, _ = _events(fresh, 5, clock2)
    clock2.advance(8 * 86_400)  # the first two blocks fall out of memory
    fresh, decisions = _events(fresh, 5, clock2)
    assert decisions[-1].kind == "temporary"  # type: ignore[union-attr]
    assert len(fresh.blocks) == 1


def test_ipv6_offenders_aggregate_per_prefix() -> None:
    a = offender_key(ipaddress.ip_address("2001:db8:1:2::5"), S)
    b = offender_key(ipaddress.ip_address("2001:db8:1:2:ffff::1"), S)
    assert a == b == ipaddress.ip_network("2001:db8:1:2::/64")
    assert str(offender_key(ipaddress.ip_address("203.0.113.9"), S)) == "203.0.113.9/32"
