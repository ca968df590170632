"""The fleet service's snapshot and counters (layer L3): what `status`, `GET /v1/fleet` and
the metrics read of daemon/fleet.py. Plain records, no logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FleetStatus:
    fleet: str
    host: str
    share: list[str]
    connected: bool
    server: str
    last_error: str
    backlog: int
    backlog_dropped: int
    published: int
    applied: int
    skipped: dict[str, int]
    invalid: int
    lag: int
    last_message_at: float | None
    last_message: str | None
    policy: dict[str, Any] | None  # the fleet policy followed here (None: not followed)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass
class FleetCounters:
    published: int = 0
    applied: int = 0
    invalid: int = 0
    lag: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    last_at: float | None = None
    last: str | None = None
