"""Outbound verdicts follow the output chain's order, with live grants and resolved names;
sandbox grants are refused for known_bad and metadata destinations."""

from __future__ import annotations

import ipaddress

import pytest

from aitherfwd.clock import FakeClock
from aitherfwd.codes import http_status
from aitherfwd.egress.grants import GrantTable
from aitherfwd.egress.sandbox import Grant, GrantError, check_ports, refusal
from aitherfwd.evaluator import Evaluator, Request
from aitherfwd.policy.model import PortRange, Protocol
from tests.unit.helpers import ok

POLICY = """\
egress:
  default_action: reject
  resolvers: [10.77.0.53]
  rules:
    - {name: block-cloud-metadata, destination: 169.254.169.254, action: deny}
    - {name: git, destination: git.example, protocol: tcp, ports: [22], action: allow}
  allowlist: {domains: [api.example], ips: [198.51.100.5], ports: [443]}
  known_good: [192.0.2.0/24]
  known_bad: [203.0.113.66, 192.0.2.66]
sandbox: {max_ttl: 1h, default_ttl: 10m, allowed_ports: [443, 80]}
"""


class State:
    def __init__(self, grants: GrantTable) -> None:
        self.grants = grants
        self.names = {("egress_dom", "93.184.216.34"), ("erule_git", "10.1.1.1")}

    def resolved(self, base: str, address: object) -> bool:
        return (base, str(address)) in self.names

    def granted(
        self, address: object, port: int | None, allowed: tuple[PortRange, ...], now: float
    ) -> str | None:
        g = self.grants.lookup(address, port, allowed, now)  # type: ignore[arg-type]
        return g.scope if g else None


def verdict(ev: Evaluator, dest: str, port: int, now: float, state: State) -> tuple[str, str]:
    req = Request(
        ipaddress.ip_address("0.0.0.0"),
        Protocol.TCP,
        port,
        "outbound",
        ipaddress.ip_address(dest),
    )
    v = ev.evaluate(req, now, egress=state)
    return v.verdict, v.rule or "default"


def test_outbound_order_matches_the_output_chain() -> None:
    clock = FakeClock()
    ev, state = Evaluator(ok(POLICY)), State(GrantTable())
    now = clock.now()
    assert verdict(ev, "127.0.0.1", 9, now, state) == ("allow", "builtin:loopback")
    assert verdict(ev, "10.77.0.53", 53, now, state) == ("allow", "builtin:dns")
    assert verdict(ev, "10.77.0.53", 443, now, state) == ("reject", "default")
    assert verdict(ev, "192.0.2.66", 443, now, state) == ("deny", "known_bad")  # over known_good
    assert verdict(ev, "169.254.169.254", 80, now, state) == ("deny", "block-cloud-metadata")
    assert verdict(ev, "10.1.1.1", 22, now, state) == ("allow", "git")
    assert verdict(ev, "10.1.1.1", 443, now, state) == ("reject", "default")
    assert verdict(ev, "192.0.2.7", 8080, now, state) == ("allow", "known_good")
    assert verdict(ev, "93.184.216.34", 443, now, state) == ("allow", "allowlist")
    assert verdict(ev, "93.184.216.34", 80, now, state) == ("reject", "default")  # ports
    assert verdict(ev, "198.51.100.5", 443, now, state) == ("allow", "allowlist")
    assert verdict(ev, "::ffff:198.51.100.5", 443, now, state) == ("allow", "allowlist")


def test_a_grant_opens_its_destination_until_it_expires() -> None:
    clock = FakeClock()
    grants = GrantTable()
    ev, state = Evaluator(ok(POLICY)), State(grants)
    now = clock.now()
    grants.put([Grant("198.18.0.1", now + 2, "sandbox-alice", (), now)], now)
    grants.put([Grant("2001:db8::/64", now + 60, "sandbox-bob", (), now)], now)
    grants.put([Grant("198.18.0.2", now + 60, "sandbox-carol", (8443,), now)], now)
    assert verdict(ev, "198.18.0.1", 443, now, state) == ("allow", "sandbox")
    assert verdict(ev, "198.18.0.1", 22, now, state) == ("reject", "default")  # allowed_ports
    assert verdict(ev, "2001:db8::42", 80, now, state) == ("allow", "sandbox")
    assert verdict(ev, "198.18.0.2", 8443, now, state) == ("allow", "sandbox")  # its own port
    assert verdict(ev, "198.18.0.2", 443, now, state) == ("reject", "default")
    clock.advance(2)
    assert verdict(ev, "198.18.0.1", 443, clock.now(), state) == ("reject", "default")
    assert grants.counts(clock.now()) == {"grants_v4": 1, "grants_v6": 1}


def test_a_grant_a_reader_pruned_waits_for_its_owner_to_record_it() -> None:
    """The grant listing, the counts and the overlap check prune lapsed grants; what they
    pruned is kept for the egress runtime's expiry (store, `sandbox_expired` audit line)."""
    grants = GrantTable()
    grants.put([Grant("198.18.0.1", 102.0, "sandbox-alice", (), 100.0)], 100.0)
    grants.put([Grant("198.18.0.2", 160.0, "sandbox-bob", (), 100.0)], 100.0)
    assert [g.key for g in grants.active(103.0)] == ["198.18.0.2"]
    assert grants.counts(103.0) == {"grants_v4": 1, "grants_v6": 0}
    assert [g.key for g in grants.take_lapsed()] == ["198.18.0.1"]
    assert grants.take_lapsed() == [] and grants.prune(103.0) == []


def test_grants_for_known_bad_or_metadata_are_refused() -> None:
    eg = ok(POLICY).egress
    for dest in ("203.0.113.66", "169.254.169.254", "fd00:ec2::254", "203.0.113.0/24"):
        assert refusal(ipaddress.ip_network(dest), eg) is not None, dest
    assert refusal(ipaddress.ip_network("198.18.0.1"), eg) is None
    with pytest.raises(GrantError) as exc:
        check_ports((22,), ok(POLICY).sandbox)
    assert exc.value.code == "E-PORT-NOT-ALLOWED" and http_status(exc.value.code) == 403


def test_grant_elements_carry_timeout_and_scope_and_a_regrant_replaces() -> None:
    clock = FakeClock()
    grants = GrantTable()
    now = clock.now()
    cmds = grants.put([Grant("198.18.0.1", now + 90, "sandbox-alice", (443,), now)], now)
    elem = cmds[0]["add"]["element"]
    assert elem["name"] == "sandbox_port_v4"
    assert elem["elem"][0]["elem"] == {
        "val": {"concat": ["198.18.0.1", 443]},
        "timeout": 90,
        "comment": "sandbox-alice",
    }
    again = grants.put([Grant("198.18.0.1", now + 30, "sandbox-alice", (), now)], now)
    assert [next(iter(c)) for c in again] == ["add", "delete", "add"]
    assert again[2]["add"]["element"]["name"] == "sandbox_v4"
