"""The gateway service: decisions, audit, counters, reloads and network grants (L3).

Owns: `Gateway` — the live policy (an immutable snapshot swapped whole on reload; an
invalid policy keeps the running one), the rate-limit windows, agent authentication
(`AGENT_TOKENS_DIR`: constant-time comparison against every agent's token), one audit
line per decision (a `decision` record, OCSF API Activity: the entry that decided, the
caller's address, the time taken) and per reload, and — for an allowed call whose tool
names a `network:` parameter — a sandbox grant from the aitherfwd daemon before the
answer, so the agent can reach the host once the gateway says yes. Its dependencies are Protocols
(`Grants`, `Audit`, a clock, a resolver, a policy loader): `gateway.files` and
`gateway.grants` give the real ones, tests give fakes. Knows no HTTP.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from aitherfwd.audit_records import AuditRecord, GatewayReloaded, ToolDecision, tool_decision
from aitherfwd.audit_sample import DecisionSampler
from aitherfwd.clock import Clock
from aitherfwd.gateway.evaluate import Call, Decision, ReasonClass, evaluate
from aitherfwd.gateway.model import Default, ToolPolicy, tool_key
from aitherfwd.gateway.network import Destination
from aitherfwd.gateway.parse import ToolPolicyResult
from aitherfwd.gateway.paths import Resolver
from aitherfwd.gateway.ratelimit import RateLimits
from aitherfwd.gateway.stats import GatewayStats

log = logging.getLogger(__name__)
AUDIT_STRING = 512  # characters of one parameter value kept in the audit line
# rate-limited calls: lines a second at most per entry, agent and address, and per entry
AUDIT_PER_CALLER, AUDIT_PER_ENTRY = 1, 10


class GrantRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Grants(Protocol):
    async def grant(self, dest: Destination, scope: str) -> None:
        """Return once the destination is open in the kernel; raise GrantRefused."""


class Audit(Protocol):
    def write(self, now: float, record: AuditRecord) -> None: ...


def audit_params(value: object, depth: int = 0) -> object:
    """The params as the audit line keeps them: long strings cut, depth bounded."""
    if depth > 8:
        return "…"
    if isinstance(value, str):
        return value if len(value) <= AUDIT_STRING else value[:AUDIT_STRING] + "…"
    if isinstance(value, dict):
        return {str(k)[:AUDIT_STRING]: audit_params(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [audit_params(v, depth + 1) for v in value[:64]]
    return value


RATE_LIMITED = "rate_limited"


def verdict_of(decision: Decision) -> str:
    if decision.allowed:
        return "allow"
    return RATE_LIMITED if decision.reason_class is ReasonClass.RATE_LIMITED else "deny"


def rule_name(policy: ToolPolicy, call: Call, decision: Decision) -> str:
    """The entry that decided, as the policy writes it: the deny entry naming the tool, the
    allow entry (its checks included), or "default" (the tool is in neither list)."""
    if decision.entry is not None:
        return decision.entry.name[:AUDIT_STRING]
    key = tool_key(call.tool)
    for name in policy.deny:
        if tool_key(name) == key:
            return name[:AUDIT_STRING]
    entry = policy.allowed_entry(call.tool)
    return entry.name[:AUDIT_STRING] if entry is not None else "default"


def allowed_reason(rule: str) -> str:
    """The reason an allowed call's line gives (the answer itself has none, as the seed)."""
    if rule == "default":
        return f"tool not listed; default {Default.ALLOW}"
    return f"tool allowed by allow entry '{rule}'"


class Gateway:
    def __init__(
        self,
        policy: ToolPolicy,
        *,
        load: Callable[[], ToolPolicyResult],
        clock: Clock,
        audit: Audit,
        resolve: Resolver,
        grants: Grants | None = None,
        agent_tokens: Mapping[str, str] | None = None,
        load_agent_tokens: Callable[[], Mapping[str, str]] | None = None,
        service_token: str | None = None,
    ) -> None:
        self.policy = policy
        self.load = load
        self.clock = clock
        self.audit = audit
        self.resolve = resolve
        self.grants = grants
        self.agent_tokens = dict(agent_tokens) if agent_tokens is not None else None
        self.load_agent_tokens = load_agent_tokens
        self.service_token = service_token
        self.limits = RateLimits()
        self.stats = GatewayStats()
        self.stats.retool(policy.tool_names())
        self.last_errors: list[dict[str, object]] = []
        self.sampler: DecisionSampler[ToolDecision] = DecisionSampler(AUDIT_PER_CALLER)
        self._sampler_lock = threading.Lock()  # audit_tick runs in the audit writer's thread

    # --- callers ---------------------------------------------------------------------
    @property
    def requires_agent_token(self) -> bool:
        return self.agent_tokens is not None

    def agent_for(self, token: str | None) -> str | None:
        """The agent holding `token`, or None. Compares against every token (no early exit
        on a match, so the time does not tell which agent is close)."""
        if self.agent_tokens is None:
            return "anonymous"
        found = None
        given = (token or "").encode()
        for name, secret in sorted(self.agent_tokens.items()):
            if hmac.compare_digest(given, secret.encode()) and token:
                found = name
        if found is None:
            self.stats.unauthorized += 1
        return found

    def may_reload(self, token: str | None) -> bool:
        """Only with the service token; with none configured, never over HTTP (the seed
        let anyone reload when its token file was missing or blank)."""
        if not self.service_token or not token:
            return False
        return hmac.compare_digest(token.encode(), self.service_token.encode())

    # --- decisions -------------------------------------------------------------------
    async def decide(self, call: Call) -> Decision:
        started = self.clock.monotonic()
        policy = self.policy
        decision = evaluate(policy, call, now=started, limits=self.limits, resolve=self.resolve)
        if decision.allowed and decision.destination is not None:
            decision = await self._open(decision, decision.destination, call.agent)
        self._record(policy, call, decision, self.clock.monotonic() - started)
        return decision

    async def _open(self, decision: Decision, dest: Destination, agent: str) -> Decision:
        if self.grants is None:
            reason = "network grant unavailable: no aitherfwd daemon configured"
            return replace(decision, allowed=False, reason=reason, reason_class=ReasonClass.NETWORK)
        try:
            await self.grants.grant(dest, agent)
        except GrantRefused as exc:
            self.stats.grants_refused += 1
            reason = f"network grant refused: {exc.message}"
            return replace(decision, allowed=False, reason=reason, reason_class=ReasonClass.NETWORK)
        self.stats.grants += 1
        return decision

    def _record(self, policy: ToolPolicy, call: Call, decision: Decision, seconds: float) -> None:
        if decision.reason_class is ReasonClass.RATE_LIMITED:
            self.stats.rate_limited += 1
        self.stats.count(call.tool, decision.allowed, decision.reason_class, seconds)
        dest = decision.destination
        params = audit_params(call.params)
        rule = rule_name(policy, call, decision)
        tool = call.tool[:AUDIT_STRING]
        record = tool_decision(decision.allowed)(
            verdict=verdict_of(decision),
            rule_name=rule,
            source_ip=call.peer,
            dest_service=tool,
            reason=decision.reason or allowed_reason(rule),
            latency_us=round(seconds * 1e6, 1),
            tool=tool,
            params=params if isinstance(params, dict) else {},
            allowed=decision.allowed,
            agent=call.agent,
            reason_class=str(decision.reason_class),
            destination=f"{dest.host}:{dest.port}" if dest and decision.allowed else "",
            origin="gateway",
        )
        log.debug(  # the audit line is the record; this is for debugging only
            "tool call tool=%.80r agent=%s allowed=%s reason=%r",
            call.tool,
            call.agent,
            decision.allowed,
            decision.reason,
        )
        now = self.clock.now()
        if record.verdict == RATE_LIMITED:  # the only calls repeated without bound
            with self._sampler_lock:
                sampled = self.sampler.offer(record, AUDIT_PER_ENTRY, now)
            if sampled is None:
                return
            record = sampled
        self.audit.write(now, record)

    def audit_tick(self, now: float, final: bool) -> list[ToolDecision]:
        """The counted lines of rate-limited calls left out (called by the audit writer
        every second, and at its close)."""
        with self._sampler_lock:
            return self.sampler.flush(now, final=final)

    # --- reload ----------------------------------------------------------------------
    def reload(self, trigger: str) -> ToolPolicyResult:
        """Load the policy (and the agent tokens) again; swap the policy in only when it is
        valid (limits and counters stay)."""
        if self.load_agent_tokens is not None:
            self.set_agent_tokens(self.load_agent_tokens())
        result = self.load()
        errors = [d.as_dict() for d in result.diagnostics if d.severity == "error"]
        if result.policy is not None:
            self.policy = result.policy
            self.stats.retool(result.policy.tool_names())
            self.limits.forget_idle(self.clock.monotonic())
            self.last_errors = []
        else:
            self.last_errors = errors
        self.stats.reloads["accepted" if result.ok else "rejected"] += 1
        sha = result.policy.sha256 if result.policy is not None else self.policy.sha256
        self.audit.write(
            self.clock.now(),
            GatewayReloaded(
                trigger=trigger, accepted=result.ok, policy_sha256=sha, errors=tuple(errors)
            ),
        )
        log.info("gateway reload trigger=%s accepted=%s", trigger, result.ok)
        return result

    def set_agent_tokens(self, tokens: Mapping[str, str] | None) -> None:
        self.agent_tokens = dict(tokens) if tokens is not None else None
