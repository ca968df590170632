"""The control socket's budgets in the daemon config (layer L1, pure).

Owns: `ControlLimits` — connections in total, per peer uid and kept for administrators;
request-body limits per role and in flight — its defaults, the `[control]` keys that set
them, and their validation (ranges, and that the admin room and reserves fit in the totals).
docs/daemon.md ("Limits of the control socket") explains each. The reading of a key into a
value is config.py's `_Checker`, passed in. Must not import adapters or do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class ControlLimits:
    max_connections: int = 256  # at once, every peer together
    connections_per_uid: int = 16  # at once, per non-admin peer uid
    admin_connections: int = 32  # of max_connections, only administrators may use
    body_bytes_read: int = 64 << 10  # request-body limit of a read-role route
    body_bytes_report: int = 1 * MIB
    body_bytes_sandbox: int = 64 << 10
    body_bytes_admin: int = 32 * MIB  # POST /v1/blocks takes up to 200,000 blocks
    body_bytes_in_flight: int = 96 * MIB  # held at once; body_bytes_admin of it kept for admins
    requests_per_uid: int = 100  # per second per non-admin peer uid (burst: twice that)
    threat_events_per_uid: int = 1000  # POST /v1/threats events per second per non-admin uid
    watchers: int = 64  # open GET /v1/watch streams at once, every peer together
    watchers_per_uid: int = 4  # of one non-admin peer uid

    def body_limit(self, role: str) -> int:
        return int(getattr(self, f"body_bytes_{role}"))

    @property
    def user_body_bytes(self) -> int:
        """Body bytes non-admin requests may hold together."""
        return self.body_bytes_in_flight - self.body_bytes_admin


KEYS = tuple(f for f in ControlLimits.__dataclass_fields__)
_RANGES = {
    "max_connections": (2, 65_536),
    "connections_per_uid": (1, 65_536),
    "admin_connections": (1, 65_535),
    "body_bytes_read": (1024, 1 << 30),
    "body_bytes_report": (1024, 1 << 30),
    "body_bytes_sandbox": (1024, 1 << 30),
    "body_bytes_admin": (1024, 1 << 30),
    "body_bytes_in_flight": (2048, 1 << 32),
    "requests_per_uid": (1, 100_000),
    "threat_events_per_uid": (1, 1_000_000),
    "watchers": (1, 4096),
    "watchers_per_uid": (1, 1024),
}


class _Check(Protocol):
    def integer(
        self, section: dict[str, Any], path: str, default: int, bounds: tuple[int, int]
    ) -> int: ...

    def error(self, code: str, path: str, message: str) -> None: ...


def check_limits(check: _Check, control: dict[str, Any]) -> ControlLimits:
    d = ControlLimits()
    values = {
        key: check.integer(control, f"control.{key}", getattr(d, key), _RANGES[key]) for key in KEYS
    }
    limits, ok = ControlLimits(**values), True
    if limits.admin_connections >= limits.max_connections:
        check.error(
            "E-CONFIG-RANGE",
            "control.admin_connections",
            f"{limits.admin_connections} must be below max_connections "
            f"({limits.max_connections}): non-admin peers need some room",
        )
        ok = False
    largest_user = max(limits.body_limit(r) for r in ("read", "report", "sandbox"))
    if limits.user_body_bytes < largest_user:
        check.error(
            "E-CONFIG-RANGE",
            "control.body_bytes_in_flight",
            f"{limits.body_bytes_in_flight} must be at least body_bytes_admin plus the "
            f"largest other body limit ({limits.body_bytes_admin + largest_user})",
        )
        ok = False
    return limits if ok else d
