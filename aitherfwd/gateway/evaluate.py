"""The decision on one tool call (layer L1, pure: time, limits and resolver passed in).

Owns: `evaluate(policy, call, now=, limits=, resolve=)` in seed 003's order — rate limit,
deny list, allow list (default deny), argument checks, path checks — and the
destination an allowed call with a `network:` entry may reach. Reasons keep the seed's
wording; `reason_class` is the bounded label the metrics count by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from aitherfwd.gateway.model import Default, ToolEntry, ToolPolicy
from aitherfwd.gateway.network import Destination, destination
from aitherfwd.gateway.params import ParamsError, check_args, leaves, path_leaves
from aitherfwd.gateway.paths import Resolver, check_path
from aitherfwd.gateway.ratelimit import Budget, RateLimits


class ReasonClass(StrEnum):
    ALLOWED = "allowed"
    RATE_LIMITED = "rate_limited"
    DENIED_TOOL = "denied_tool"
    NOT_ALLOWED = "not_allowed"
    ARGUMENTS = "arguments"
    PATH = "path"
    NETWORK = "network"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Call:
    tool: str
    params: dict[str, object] = field(default_factory=dict)
    agent: str = "anonymous"
    peer: str | None = None  # the caller's address, for the audit line


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""
    reason_class: ReasonClass = ReasonClass.ALLOWED
    entry: ToolEntry | None = None
    destination: Destination | None = None
    retry_after: float = 0.0  # seconds, when rate limited

    @staticmethod
    def deny(reason: str, cls: ReasonClass, entry: ToolEntry | None = None) -> Decision:
        return Decision(False, reason, cls, entry)


def budgets(policy: ToolPolicy, call: Call, entry: ToolEntry | None) -> list[Budget]:
    out = [Budget(f"agent:{call.agent}", policy.requests_per_minute)]
    if entry is not None and entry.requests_per_minute is not None:
        out.append(Budget(f"tool:{call.agent}/{entry.key}", entry.requests_per_minute))
    return out


def evaluate(
    policy: ToolPolicy, call: Call, *, now: float, limits: RateLimits, resolve: Resolver
) -> Decision:
    entry = policy.allowed_entry(call.tool)
    spent = limits.admit(budgets(policy, call, entry), now)
    if spent is not None:
        return Decision(
            False,
            "rate limit exceeded",
            ReasonClass.RATE_LIMITED,
            entry,
            retry_after=limits.retry_after(spent, now),
        )
    if policy.denies(call.tool):
        return Decision.deny("tool is explicitly denied", ReasonClass.DENIED_TOOL)
    if entry is None:
        if policy.default is Default.ALLOW:
            return Decision(True)
        return Decision.deny("tool not in allowlist", ReasonClass.NOT_ALLOWED)
    return check_entry(entry, call, resolve)


def check_entry(entry: ToolEntry, call: Call, resolve: Resolver) -> Decision:
    """Arguments, then paths, then the network destination of an allowed tool."""
    try:
        items = leaves(call.params)
    except ParamsError as exc:
        return Decision.deny(f"invalid params: {exc}", ReasonClass.INVALID, entry)
    reason = check_args(entry, items)
    if reason is not None:
        return Decision.deny(reason, ReasonClass.ARGUMENTS, entry)
    if entry.checks_paths:
        for leaf in path_leaves(entry, items):
            reason = check_path(entry, leaf.value, resolve)
            if reason is not None:
                return Decision.deny(reason, ReasonClass.PATH, entry)
    if entry.network is None:
        return Decision(True, entry=entry)
    dest = destination(entry.network, call.params)
    if isinstance(dest, str):
        return Decision.deny(dest, ReasonClass.NETWORK, entry)
    return Decision(True, entry=entry, destination=dest)
