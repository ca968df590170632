"""Time windows in IANA time zones (layer L1, pure; reads the system's tz database).

Owns: what a `time_window` with `timezone: Europe/Berlin` means at a given instant. The
kernel matches `meta day` / `meta hour` in UTC, so the compiler takes the policy
`localize`d at an instant: every zoned window shifted by its zone's UTC offset *at that
instant* (days move with it when the shift crosses midnight). `next_change` says when an
offset next changes (a DST transition), the instant the daemon recompiles; `contains_at`
is the exact local-time answer the evaluator gives. Between a transition and the
recompile (one housekeeping tick) kernel and evaluator may differ by the hour that moved.

Time is an argument. zoneinfo reads /usr/share/zoneinfo (Debian's tzdata) once per zone.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

from aitherfwd.policy.model import DAY_SECONDS, Policy, Rule, TimeWindow

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

UTC_NAMES = ("UTC", "Z", "ETC/UTC", "GMT", "ETC/GMT")
HORIZON_DAYS = 400  # transitions further away than this are found after a later recompile


def check_zone(name: str) -> str | None:
    """None for UTC (and its aliases), the IANA name otherwise; ValueError with a fix."""
    if name.strip().upper() in UTC_NAMES:
        return None
    from zoneinfo import ZoneInfoNotFoundError  # noqa: PLC0415 - see _zone

    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"'{name}' is not an IANA time zone (like Europe/Berlin or America/New_York; "
            "see /usr/share/zoneinfo)"
        ) from None
    return name


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    from zoneinfo import ZoneInfo  # noqa: PLC0415 - only a policy with time zones needs it

    return ZoneInfo(name)


def offset(name: str, now: float) -> int:
    """The zone's UTC offset at `now`, in seconds (local = UTC + offset)."""
    delta = datetime.fromtimestamp(now, UTC).astimezone(_zone(name)).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def shifted(window: TimeWindow, off: int) -> TimeWindow:
    """A local window (`local = UTC + off`) as the UTC window the kernel matches."""
    length = (
        window.end - window.start
        if window.start < window.end
        else (window.end + DAY_SECONDS - window.start)
    )
    start_utc = window.start - off
    days_moved = math.floor(start_utc / DAY_SECONDS)
    start = start_utc - days_moved * DAY_SECONDS
    end = start + length
    if end > DAY_SECONDS:
        end -= DAY_SECONDS
    days = frozenset((d + days_moved) % 7 for d in window.days)
    return TimeWindow(days, start, end)


def utc_window(window: TimeWindow, now: float) -> TimeWindow:
    return window if window.tz is None else shifted(window, offset(window.tz, now))


def zoned(policy: Policy) -> list[str]:
    """The time zones the policy's windows name, sorted."""
    return sorted({w.tz for r in policy.rules if (w := r.time_window) and w.tz is not None})


def localize(policy: Policy, now: float) -> Policy:
    """The policy with every zoned window in UTC as of `now` (the same object if none)."""
    if not zoned(policy):
        return policy
    rules = tuple(_localized(r, now) for r in policy.rules)
    return replace(policy, rules=rules)


def _localized(rule: Rule, now: float) -> Rule:
    w = rule.time_window
    if w is None or w.tz is None:
        return rule
    return replace(rule, time_window=utc_window(w, now))


def next_change(policy: Policy, now: float) -> float | None:
    """The first instant after `now` at which a zone of the policy changes its offset."""
    found = [t for z in zoned(policy) if (t := _next_transition(z, now)) is not None]
    return min(found) if found else None


def _next_transition(name: str, now: float) -> float | None:
    base = offset(name, now)
    lo = math.floor(now)
    for day in range(1, HORIZON_DAYS + 1):
        hi = math.floor(now) + day * DAY_SECONDS
        if offset(name, hi) != base:
            while hi - lo > 1:  # bisect to the first second of the new offset
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(name, mid) == base else (lo, mid)
            return float(hi)
        lo = hi
    return None


def contains_at(window: TimeWindow, now: float) -> bool:
    """Whether `now` falls in the window, read on the window's own clock."""
    if window.tz is None:
        whole = math.floor(now)
        return window.contains((whole // DAY_SECONDS + 4) % 7, whole % DAY_SECONDS)
    local = datetime.fromtimestamp(math.floor(now), UTC).astimezone(_zone(window.tz))
    weekday = (local.weekday() + 1) % 7  # nftables: Sunday = 0
    midnight = local.replace(hour=0, minute=0, second=0)
    second = int((local - midnight) / timedelta(seconds=1))
    return window.contains(weekday, second)
