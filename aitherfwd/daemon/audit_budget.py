"""A line budget for the audit trail's high-volume, automated records (layer L3).

Owns: keeping floods of automated state changes from rotating the security events away.
A report-role uid sending threat events from random sources makes one escalation per
offender (≈ 650 bytes a line); at the threat budget of 1,000 events a second that alone
would rotate the 250 MB trail away in minutes, taking every administrator's block, grant
and reload with it. The same holds for the expiry of a 100,000-block batch and for the
fleet's blocks.

So the records below go through a budget, per key (the record's event, plus the reporter
uid for escalations and the block source for `blocked` and `block_expired`): the first
`lines` records of a key within `interval` seconds are written as they are; further ones
are folded, and one `audit_summary` line per key and interval stands for them (how many,
the first `listed` addresses, the time of the first one folded). Under a sustained flood a
key writes `lines` lines and then one summary a minute (≈ 4 MB a day), and the blocks
themselves stay in the state store with their full reasons. At most `max_keys` keys are
followed at once; records of further keys are folded together under one overflow key
(never more lines, never lost counts).

What is budgeted: `escalation_temporary`/`escalation_permanent`, `blocked` made by the
reputation ladder or the fleet, every `block_expired` and `sandbox_expired`, and the
sandbox role's `sandbox_granted`/`sandbox_refused` (per uid: a proxy in a loop, or a
hostile one hitting the grant caps, writes one line per request otherwise). Everything
else passes through unchanged, and so does every record whose actor is an administrator
(`exempt`): their blocks, unblocks, reloads and grants are each on record. Refused
control requests are aggregated on their own (daemon/rejections.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aitherfwd.audit_records import (
    AuditRecord,
    AuditSummary,
    Blocked,
    BlockExpired,
    EscalationPermanent,
    EscalationTemporary,
    SandboxExpired,
    SandboxGranted,
    SandboxRefused,
    rfc3339,
)

INTERVAL = 60.0  # seconds of one budget window
LINES = 10  # records of one key written as they are per window
LISTED = 100  # addresses a summary line lists (its `count` holds them all)
MAX_KEYS = 64
BUDGETED_SOURCES = frozenset({"reputation", "fleet"})  # `blocked` lines of these sources
OVERFLOW = ("overflow", "")

Key = tuple[str, str]
Actor = Mapping[str, int] | None
Exempt = Callable[[Mapping[str, int]], bool]  # is this API caller an administrator?


class Sink(Protocol):
    def write(self, now: float, record: AuditRecord) -> None: ...


@dataclass(slots=True)
class _Window:
    start: float
    written: int = 0
    folded: int = 0  # items (blocks, escalations) folded since the last summary
    first: float = 0.0  # when the first folded one came
    addresses: list[str] = field(default_factory=list)
    source: str = ""
    event: str = ""


def _reporter(actor: Actor) -> str:
    uid = None if actor is None else actor.get("uid")
    return "in-process" if uid is None else f"uid {uid}"


def _key(record: AuditRecord) -> tuple[Key, str, Actor, tuple[str, ...], int] | None:
    """(key, source, actor, addresses, items) of a budgeted record; None for any other."""
    if isinstance(record, EscalationTemporary | EscalationPermanent):
        who = _reporter(record.actor)
        return (record.event, who), who, record.actor, (record.source_ip,), 1
    if isinstance(record, SandboxGranted | SandboxRefused):
        who = _reporter(record.actor)
        return (record.event, who), who, record.actor, (record.destination,), 1
    if isinstance(record, Blocked) and record.source in BUDGETED_SOURCES:
        src = record.source
        return (record.event, src), src, record.actor, record.addresses, record.count
    if isinstance(record, BlockExpired):
        return (record.event, record.source), record.source, None, (record.source_ip,), 1
    if isinstance(record, SandboxExpired):
        return (record.event, "sandbox"), "sandbox", None, (record.destination,), 1
    return None


class AuditBudget:
    """A sink in front of the audit trail: `write` for every record, `flush` by a timer
    (every second), `flush(final=True)` at stop."""

    def __init__(
        self,
        sink: Sink,
        interval: float = INTERVAL,
        lines: int = LINES,
        max_keys: int = MAX_KEYS,
        exempt: Exempt = lambda actor: False,
    ) -> None:
        self.sink, self.interval, self.lines, self.max_keys = sink, interval, lines, max_keys
        self.exempt = exempt
        self.windows: dict[Key, _Window] = {}
        self.folded = 0  # records folded since start (status, tests)
        self.summaries = 0  # summary lines written

    def write(self, now: float, record: AuditRecord) -> None:
        budgeted = _key(record)
        if budgeted is None or (budgeted[2] is not None and self.exempt(budgeted[2])):
            self.sink.write(now, record)
            return
        key, source, _, addresses, items = budgeted
        if key not in self.windows and len(self.windows) >= self.max_keys:
            key, source = OVERFLOW, "overflow"
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = _Window(now, source=source, event=record.event)
        if window.written < self.lines and not window.folded:
            window.written += 1
            self.sink.write(now, record)
            return
        if not window.folded:
            window.first = now
        window.folded += items
        room = LISTED - len(window.addresses)
        if room > 0:
            window.addresses.extend(addresses[:room])
        if key == OVERFLOW and window.event != record.event:
            window.event = "mixed"
        self.folded += 1

    def flush(self, now: float, *, final: bool = False) -> None:
        """Write a summary for every window that is over (all of them when `final`) and
        held folded records; a window over with nothing folded is forgotten, so the next
        record of its key is written at once."""
        for key, window in list(self.windows.items()):
            if not final and now - window.start < self.interval:
                continue
            if not window.folded:
                del self.windows[key]
                continue
            self.sink.write(
                now,
                AuditSummary(
                    summarized=window.event,
                    source=window.source,
                    count=window.folded,
                    addresses=tuple(window.addresses),
                    since=rfc3339(window.first),
                ),
            )
            self.summaries += 1
            # still in a flood: the next window starts folded-only (its lines are spent)
            self.windows[key] = _Window(
                now, written=self.lines, source=window.source, event=window.event
            )
