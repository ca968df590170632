"""The reputation ladder: threat events → score → temporary blocks → permanent block
(layer L1, pure; time is an argument).

Owns: `ReputationSettings`, `Offender` (score with continuous decay, the blocks it earned
within `memory`), `offender_key` (IPv6 offenders aggregate per prefix) and
`step(offender, severity, now, settings) -> (offender, decision)`. It decides; the daemon
turns a decision into a block through the same path as a manual block.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from aitherfwd.policy.model import (
    THRESHOLD_SLACK,
    IPAddress,
    IPNetwork,
    ReputationSettings,
    Severity,
)


@dataclass(frozen=True, slots=True)
class Offender:
    score: float = 0.0
    updated: float = 0.0
    blocks: tuple[float, ...] = ()  # when each block within `memory` started
    blocked_until: float | None = None  # end of the current temporary block
    permanent: bool = False
    events: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str  # "temporary" | "permanent"
    ttl: int | None  # seconds; None = permanent
    block_number: int  # 1 for the first block within memory, ...


def offender_key(address: IPAddress, settings: ReputationSettings) -> IPNetwork:
    """The unit that is scored and blocked: one IPv4 address, or the IPv6 /ipv6_prefix."""
    if address.version == 4:
        return ipaddress.IPv4Network(f"{address}/32")
    return ipaddress.IPv6Network(f"{address}/{settings.ipv6_prefix}", strict=False)


def decayed(off: Offender, now: float, settings: ReputationSettings) -> float:
    elapsed = max(0.0, now - off.updated)
    return float(off.score * 0.5 ** (elapsed / settings.decay_half_life))


def blocked(off: Offender, now: float) -> bool:
    return off.permanent or (off.blocked_until is not None and off.blocked_until > now)


def step(
    off: Offender | None, severity: Severity, now: float, settings: ReputationSettings
) -> tuple[Offender, Decision | None]:
    """One threat event. While blocked, events are counted but do not escalate."""
    off = off or Offender(updated=now)
    weight = settings.severity_weights.get(severity, 1.0)
    if blocked(off, now):
        return replace(off, events=off.events + 1), None
    score = decayed(off, now, settings) + weight
    recent = tuple(t for t in off.blocks if now - t < settings.memory)
    if score < settings.threshold * (1 - THRESHOLD_SLACK):
        return replace(off, score=score, updated=now, blocks=recent, events=off.events + 1), None
    recent = (*recent, now)
    if len(recent) >= settings.permanent_after:
        decision = Decision("permanent", None, len(recent))
        until = None
    else:
        decision = Decision("temporary", settings.temp_block, len(recent))
        until = now + settings.temp_block
    # the score starts again from zero after each block (seed: "5 more events → TEMP_BLOCK")
    return Offender(0.0, now, recent, until, decision.kind == "permanent", off.events + 1), decision


def lifted(off: Offender) -> Offender:
    """After a manual unblock: the offender may be blocked again; its history stays."""
    return replace(off, blocked_until=None, permanent=False, score=0.0)
