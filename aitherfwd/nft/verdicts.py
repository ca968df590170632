"""The statements that end a rule, shared by the input chains (compiler.py) and the output
chain (egress/chain.py): the verdict of an action, and the rate-limited log before it.

Owns: how allow/deny/reject become nftables statements (reject answers TCP with a reset
and everything else with ICMP) and the log limit. Pure: builds JSON, no I/O.
"""

from __future__ import annotations

from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Action, Protocol

Json = b.Json


def verdicts(action: Action, proto: Protocol | None) -> list[list[Json]]:
    """The closing statements: one list per rule to emit (reject without a protocol needs
    two rules, a TCP reset for TCP and ICMP for the rest)."""
    if action is Action.ALLOW:
        return [[b.accept()]]
    if action is Action.DENY:
        return [[b.drop()]]
    if proto is Protocol.TCP:
        return [[b.reject_tcp_reset()]]
    tcp = [b.match(b.meta("l4proto"), "tcp"), b.reject_tcp_reset()]
    return [[b.reject_icmpx()]] if proto is Protocol.UDP else [tcp, [b.reject_icmpx()]]


def log_exprs(prefix: str, group: int) -> list[Json]:
    """A log to NFLOG `group`, limited to LOG_RATE_PER_SECOND (burst LOG_BURST). Put it in a
    rule of its own: past the limit the rule stops matching."""
    return [b.limit(n.LOG_RATE_PER_SECOND, "second", n.LOG_BURST), b.log(prefix, group)]
