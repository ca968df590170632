"""Shared helpers of the gateway's tests: policies, a recording audit, fake grants."""

from __future__ import annotations

import os
from pathlib import Path

from aitherfwd.audit_records import AuditRecord
from aitherfwd.clock import FakeClock
from aitherfwd.gateway.evaluate import Call, Decision, evaluate
from aitherfwd.gateway.model import ToolPolicy
from aitherfwd.gateway.network import Destination
from aitherfwd.gateway.parse import ToolPolicyResult, parse_tool_policy
from aitherfwd.gateway.ratelimit import RateLimits
from aitherfwd.gateway.service import Gateway, GrantRefused

FIXTURES = Path(__file__).parent / "fixtures" / "gateway"
SEED_POLICY = FIXTURES / "seed_policy.yaml"


def policy(text: str) -> ToolPolicy:
    result = parse_tool_policy(text, "policy.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return result.policy


def seed_policy() -> ToolPolicy:
    return policy(SEED_POLICY.read_text())


def decide(pol: ToolPolicy, tool: str, params: dict[str, object] | None = None) -> Decision:
    return evaluate(
        pol, Call(tool, params or {}), now=0.0, limits=RateLimits(), resolve=os.path.realpath
    )


class Recorder:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, now: float, record: AuditRecord) -> None:
        self.records.append(record)


class FakeGrants:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.granted: list[tuple[Destination, str]] = []

    async def grant(self, dest: Destination, scope: str) -> None:
        if self.refuse is not None:
            raise GrantRefused(self.refuse)
        self.granted.append((dest, scope))


def gateway(text: str, **kwargs: object) -> tuple[Gateway, Recorder, FakeClock]:
    clock, audit = FakeClock(), Recorder()
    holder = {"text": text}

    def load() -> ToolPolicyResult:
        return parse_tool_policy(holder["text"], "policy.yaml")

    gw = Gateway(
        policy(text),
        load=load,
        clock=clock,
        audit=audit,
        resolve=os.path.realpath,
        **kwargs,  # type: ignore[arg-type]
    )
    gw.load_text = holder  # type: ignore[attr-defined]  # tests swap the file's text here
    return gw, audit, clock
