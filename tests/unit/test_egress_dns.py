"""Refresh scheduling of allowlisted names, on a fake clock: TTL bounded by min/max refresh,
grace for vanished addresses, failures never remove anything, deltas in one batch."""

from __future__ import annotations

from aitherfwd.clock import FakeClock
from aitherfwd.egress.dns import DomainTable, element_delta
from aitherfwd.policy.model import DnsBounds

BOUNDS = DnsBounds(min_refresh=5, max_refresh=3600, grace=60)
HOSTS = {"api.example": ("egress_dom",), "git.example": ("erule_git", "egress_dom")}


def table() -> DomainTable:
    t = DomainTable()
    t.configure(HOSTS, BOUNDS)
    return t


def test_new_names_are_due_at_once_and_then_when_their_ttl_runs_out() -> None:
    clock, t = FakeClock(), table()
    assert t.due(clock.now()) == ["api.example", "git.example"]
    t.answered("api.example", (("192.0.2.1", 300), ("2001:db8::1", 120)), clock.now())
    assert t.names["api.example"].next_refresh == clock.now() + 120  # the smallest TTL
    t.answered("git.example", (("192.0.2.9", 1),), clock.now())
    assert t.names["git.example"].next_refresh == clock.now() + 5  # min_refresh
    t.answered("git.example", (("192.0.2.9", 86_400),), clock.now())
    assert t.names["git.example"].next_refresh == clock.now() + 3600  # max_refresh
    clock.advance(121)
    assert t.due(clock.now()) == ["api.example"]


def test_a_vanished_address_stays_for_its_ttl_plus_grace() -> None:
    clock, t = FakeClock(), table()
    t.answered("api.example", (("192.0.2.1", 30),), clock.now())
    clock.advance(30)
    change = t.answered("api.example", (("192.0.2.2", 30),), clock.now())
    assert change.added == ("192.0.2.2",) and change.removed == ()
    assert t.desired()["egress_dom_v4"] == {"192.0.2.1", "192.0.2.2"}
    clock.advance(59)  # last seen at t0 with ttl 30: kept until t0 + 30 + 60
    assert t.expire(clock.now()) == []
    clock.advance(2)
    assert [c.removed for c in t.expire(clock.now())] == [("192.0.2.1",)]


def test_failures_keep_every_address_and_back_off_within_bounds() -> None:
    clock, t = FakeClock(), table()
    t.answered("api.example", (("192.0.2.1", 10),), clock.now())
    for expected in (5, 10, 20, 40):
        t.failed("api.example", "SERVFAIL", clock.now())
        assert t.names["api.example"].next_refresh == clock.now() + expected
    clock.advance(10_000)
    assert t.expire(clock.now()) == []  # a failing name is never emptied
    assert t.desired()["egress_dom_v4"] == {"192.0.2.1"}
    assert t.stats.failures == 4


def test_a_name_filling_two_sets_and_a_reload_that_drops_it() -> None:
    clock, t = FakeClock(), table()
    t.answered("git.example", (("192.0.2.9", 60), ("2001:db8::9", 60)), clock.now())
    d = t.desired()
    assert d["erule_git_v4"] == {"192.0.2.9"} and d["egress_dom_v6"] == {"2001:db8::9"}
    assert t.holds("erule_git", __import__("ipaddress").ip_address("192.0.2.9"))
    assert t.configure({"api.example": ("egress_dom",)}, BOUNDS) == ["git.example"]
    assert t.desired() == {}


def test_element_delta_is_one_batch_of_adds_and_safe_deletes() -> None:
    installed = {"egress_dom_v4": frozenset({"192.0.2.1", "192.0.2.2"})}
    desired = {"egress_dom_v4": frozenset({"192.0.2.2", "192.0.2.3"})}
    cmds = element_delta(installed, desired)
    kinds = [next(iter(c)) for c in cmds]
    assert kinds == ["add", "delete", "add"]
    assert cmds[1]["delete"]["element"]["elem"] == ["192.0.2.1"]  # type: ignore[index]
    assert cmds[2]["add"]["element"]["elem"] == ["192.0.2.3"]  # type: ignore[index]
    assert element_delta(desired, desired) == []
