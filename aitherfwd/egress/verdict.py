"""Would this outbound connection pass, and which rule decides? (layer L1, pure)

Owns: the outbound half of the evaluator, with exactly the semantics of the output chain
`egress.chain` builds: loopback, DNS to the resolvers, known_bad, named rules in order,
known_good, allowlist (resolved domains and IPs, its ports), sandbox grants, default. The
live state it needs — which names resolved to what, which grants exist — comes in through
`EgressState`. Not modelled: established/related packets (a request is a new connection).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from aitherfwd.egress import names as en
from aitherfwd.policy.model import (
    Action,
    Egress,
    IPAddress,
    IPNetwork,
    Policy,
    PortRange,
    Protocol,
)

_VERBS = {Action.ALLOW: "allows", Action.DENY: "denies", Action.REJECT: "rejects"}


class EgressState(typing.Protocol):
    """The daemon's live outbound state (`EgressRuntime` fits)."""

    def resolved(self, base: str, address: IPAddress) -> bool:
        """True when a name filling the domain set `base` resolved to `address`."""

    def granted(
        self, address: IPAddress, port: int | None, allowed: tuple[PortRange, ...], now: float
    ) -> str | None:
        """The scope of a live sandbox grant that lets this connection out, if any."""


@dataclass(frozen=True, slots=True)
class Outbound:
    action: str  # allow | deny | reject
    rule: str | None  # the deciding rule; None for the default
    reason: str


def outbound(
    policy: Policy,
    dest: IPAddress,
    *,
    protocol: Protocol,
    port: int | None,
    now: float,
    state: EgressState | None,
) -> Outbound:
    eg = policy.egress
    if eg is None:
        action = policy.settings.egress_default_policy
        return Outbound(str(action), None, f"outbound: no egress section; default {action}")
    what = f"{protocol}/{port}" if port is not None else str(protocol)
    for step in (_builtin, _named, _allowed):
        verdict = step(eg, dest, protocol, port, state)
        if verdict is not None:
            return verdict
    if protocol is not Protocol.ICMP and state is not None:
        scope = state.granted(dest, port, policy.sandbox.allowed_ports, now)
        if scope is not None:
            return Outbound("allow", en.RULE_SANDBOX, f"sandbox grant for scope '{scope}'")
    return _default(eg, what, dest)


def _builtin(
    eg: Egress, dest: IPAddress, protocol: Protocol, port: int | None, state: EgressState | None
) -> Outbound | None:
    if dest.is_loopback:
        return Outbound("allow", en.RULE_LOOPBACK, "loopback is always allowed")
    if port == 53 and protocol is not Protocol.ICMP and dest in eg.resolvers:
        return Outbound("allow", en.RULE_DNS, f"{dest} is a resolver of the policy")
    bad = _within(dest, eg.known_bad)
    if bad is not None:
        return Outbound("deny", en.RULE_KNOWN_BAD, f"{dest} is known_bad ({bad})")
    return None


def _named(
    eg: Egress, dest: IPAddress, protocol: Protocol, port: int | None, state: EgressState | None
) -> Outbound | None:
    what = f"{protocol}/{port}" if port is not None else str(protocol)
    for r in eg.rules:
        if r.host is not None:
            hit = state is not None and state.resolved(en.rule_base(r.name), dest)
        else:
            hit = _within(dest, r.destinations) is not None
        if hit and _proto_ok(r.protocol, r.ports, protocol, port):
            target = r.host or ", ".join(str(d) for d in r.destinations)
            reason = f"rule '{r.name}' {_VERBS[r.action]} {what} to {target}"
            return Outbound(str(r.action), r.name, reason)
    return None


def _allowed(
    eg: Egress, dest: IPAddress, protocol: Protocol, port: int | None, state: EgressState | None
) -> Outbound | None:
    good = _within(dest, eg.known_good)
    if good is not None:
        return Outbound("allow", en.RULE_KNOWN_GOOD, f"{dest} is known_good ({good})")
    if not _proto_ok(Protocol.ANY, eg.allow_ports, protocol, port):
        return None
    if state is not None and state.resolved(en.DOMAIN_BASE, dest):
        return Outbound("allow", en.RULE_ALLOWLIST, f"{dest} is an allowlisted domain's address")
    ip = _within(dest, eg.allow_ips)
    if ip is not None:
        return Outbound("allow", en.RULE_ALLOWLIST, f"{dest} is allowlisted ({ip})")
    return None


def _default(eg: Egress, what: str, dest: IPAddress) -> Outbound:
    action = eg.default_action
    return Outbound(str(action), None, f"no egress rule matched {what} to {dest}; default {action}")


def _within(address: IPAddress, nets: tuple[IPNetwork, ...]) -> IPNetwork | None:
    for net in nets:
        if net.version == address.version and address in net:
            return net
    return None


def _proto_ok(
    want: Protocol, ports: tuple[PortRange, ...], protocol: Protocol, port: int | None
) -> bool:
    if want is Protocol.ICMP:
        return protocol is Protocol.ICMP
    if want in (Protocol.TCP, Protocol.UDP) and protocol is not want:
        return False
    if not ports:
        return True
    return protocol is not Protocol.ICMP and port is not None and any(port in r for r in ports)
