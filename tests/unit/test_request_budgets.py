"""Request budgets per peer uid: a non-admin uid gets `requests_per_uid` per second (a burst
of twice that), then 429 E-RATE-LIMITED on the request head; its budget refills with time;
administrators are never budgeted; other uids are not affected."""

from __future__ import annotations

import pytest

from aitherfwd import codes
from aitherfwd.daemon.budgets import MAX_PEERS, RequestBudgets
from aitherfwd.errors import RequestError
from aitherfwd.testing import FakeClock


def test_a_burst_passes_then_the_uid_is_refused_until_its_budget_refills() -> None:
    clock = FakeClock()
    budgets = RequestBudgets(10, clock.monotonic)
    for _ in range(20):
        budgets.take(1000)
    with pytest.raises(RequestError) as refused:
        budgets.take(1000)
    assert refused.value.code == "E-RATE-LIMITED"
    assert codes.http_status(refused.value.code) == 429
    budgets.take(2000)  # another uid has its own budget
    clock.advance(0.5)  # 5 tokens back
    for _ in range(5):
        budgets.take(1000)
    with pytest.raises(RequestError):
        budgets.take(1000)
    assert budgets.refused == 2


def test_the_peers_remembered_are_bounded() -> None:
    budgets = RequestBudgets(1, FakeClock().monotonic)
    for uid in range(MAX_PEERS * 2):
        budgets.take(uid)
    assert len(budgets._buckets) <= MAX_PEERS


def test_a_large_batch_is_taken_into_debt_and_the_debt_refuses_until_paid() -> None:
    clock = FakeClock()
    events = RequestBudgets(10, clock.monotonic, unit="threat events")
    events.take(7, 500)  # far above the burst of 20: accepted once, 480 events in debt
    with pytest.raises(RequestError) as refused:
        events.take(7, 1)
    assert "threat events per second" in refused.value.message
    clock.advance(48.0)  # 480 tokens back: still short of one
    with pytest.raises(RequestError):
        events.take(7, 1)
    clock.advance(0.2)
    events.take(7, 1)
