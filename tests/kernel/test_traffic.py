"""Real packets through an applied policy: zones, services, ports, source CIDRs, reject,
time windows, per-source rate limits — over IPv4 and IPv6 alike."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.policy.parse import parse_policy
from lab.netns import inside
from lab.network import Client, Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

TCP_PORTS = [22, 80, 443, 3306, 5432, 7000, 8000, 8111, 9999]
UDP_PORTS = [53, 514]


def _hhmm(seconds: int) -> str:
    seconds %= 86_400
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _policy_text() -> str:
    now = datetime.now(UTC)
    sec = now.hour * 3600 + now.minute * 60
    return f"""\
version: 1
settings: {{default_policy: deny, log_denied: true, syn_flood_threshold: 100000}}
zones:
  - {{name: lan, cidrs: [10.77.1.0/24, "fd77:0:0:1::/64"]}}
  - {{name: world, cidrs: [0.0.0.0/0, "::/0"]}}
services:
  Secrets: {{ports: [8111], protocol: tcp}}
  DNS: {{ports: [53], protocol: udp}}
rules:
  - {{name: secrets_world, zone: world, dest_services: [Secrets], action: reject}}
  - {{name: secrets_lan, zone: lan, dest_services: [Secrets], action: allow}}
  - {{name: web, dest_ports: [80, 443], protocol: tcp, action: allow}}
  - {{name: logged, dest_ports: [7000], protocol: tcp, action: allow, log: true}}
  - {{name: narrow, dest_ports: [8000], protocol: tcp,
      source_cidrs: [10.77.1.0/24, "fd77:0:0:1::/64"], action: allow}}
  - {{name: dns, zone: lan, dest_services: [DNS], action: allow}}
  - {{name: ssh, dest_ports: [22], protocol: tcp, rate_limit_rps: 1, burst: 3, action: allow}}
  - name: open_now
    dest_ports: [3306]
    protocol: tcp
    time_window: {{start: "{_hhmm(sec - 3600)}", end: "{_hhmm(sec + 3600)}"}}
    action: allow
  - name: closed_now
    dest_ports: [5432]
    protocol: tcp
    time_window: {{start: "{_hhmm(sec + 7200)}", end: "{_hhmm(sec + 10800)}"}}
    action: allow
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    path: Path = tmp_path_factory.mktemp("traffic") / "policy.yaml"
    path.write_text(_policy_text())
    result = load_policy(path)
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    with Lab(clients_wanted=2) as lab:
        lab.listen(TCP_PORTS, UDP_PORTS)
        with inside(lab.server):
            Nft().apply(compile_policy(result.policy))
        yield lab


def _counter(lab: Lab, name: str) -> int:
    with inside(lab.server):
        return Nft().counters()[name][0]


def _both(c: Client) -> list[tuple[str, str]]:
    return [("v4", c.server_v4), ("v6", c.server_v6)]


def test_allowed_port_connects_over_ipv4_and_ipv6(lab: Lab) -> None:
    for client in lab.clients:
        for fam, addr in _both(client):
            assert lab.tcp(client, addr, 443) == "ok", (client.index, fam)


def test_a_logged_rule_keeps_its_verdict_beyond_the_log_rate(lab: Lab) -> None:
    """The log limit (10/s, burst 20) only thins the log; every connection still passes."""
    lan = lab.clients[0]
    for _, addr in _both(lan):
        results = lab.probe(lan, addr, 7000, count=60, timeout=0.5)
        assert results == ["ok"] * 60


def test_port_without_a_rule_is_dropped_by_the_default_policy(lab: Lab) -> None:
    lan = lab.clients[0]
    before = _counter(lab, "default")
    for _, addr in _both(lan):
        assert lab.tcp(lan, addr, 9999, timeout=0.5) == "timeout"
    assert _counter(lab, "default") >= before + 2


def test_service_name_resolves_to_its_port_per_zone(lab: Lab) -> None:
    lan, world = lab.clients
    for _, addr in _both(lan):
        assert lab.tcp(lan, addr, 8111) == "ok"
    before = _counter(lab, "rule_secrets_world")
    for _, addr in _both(world):
        started = time.monotonic()
        assert lab.tcp(world, addr, 8111, timeout=3.0) == "refused"
        assert time.monotonic() - started < 2.0  # reject answers at once (no timeout)
    assert _counter(lab, "rule_secrets_world") == before + 2


def test_source_cidr_narrows_a_rule(lab: Lab) -> None:
    lan, world = lab.clients
    for _, addr in _both(lan):
        assert lab.tcp(lan, addr, 8000) == "ok"
    for _, addr in _both(world):
        assert lab.tcp(world, addr, 8000, timeout=0.5) == "timeout"


def test_udp_service_only_for_its_zone(lab: Lab) -> None:
    lan, world = lab.clients
    for _, addr in _both(lan):
        assert lab.probe(lan, addr, 53, proto="udp") == ["ok"]
    for _, addr in _both(world):
        assert lab.probe(world, addr, 53, proto="udp", timeout=0.5) == ["timeout"]


def test_time_window_that_contains_now_opens_and_one_that_does_not_stays_shut(lab: Lab) -> None:
    lan = lab.clients[0]
    for _, addr in _both(lan):
        assert lab.tcp(lan, addr, 3306) == "ok"
        assert lab.tcp(lan, addr, 5432, timeout=0.5) == "timeout"


def test_rate_limit_drops_the_excess_of_one_source_only(lab: Lab) -> None:
    lan, world = lab.clients
    results = lab.probe(lan, lan.server_v4, 22, count=20, timeout=0.2)
    ok = results.count("ok")
    assert ok >= 3, results  # the burst passes
    assert results.count("timeout") >= 8, results  # the excess is dropped
    assert _counter(lab, "ratelimit_ssh") >= 8
    # another source is unaffected, on both families
    assert lab.probe(world, world.server_v4, 22, count=3) == ["ok", "ok", "ok"]
    assert lab.probe(world, world.server_v6, 22, count=3) == ["ok", "ok", "ok"]


def test_ipv6_source_rate_limited_separately(lab: Lab) -> None:
    lan = lab.clients[0]
    results = lab.probe(lan, lan.server_v6, 22, count=12, timeout=0.2)
    assert results.count("ok") >= 1
    assert results.count("timeout") >= 5, results


def test_a_changed_rate_limit_takes_effect_for_sources_already_metered(lab: Lab) -> None:
    """A kernel meter element keeps the rate it was created with, so a new rate must not
    inherit the old buckets: after raising the ssh limit a throttled source passes at once."""
    lan = lab.clients[0]
    assert lab.probe(lan, lan.server_v4, 22, count=12, timeout=0.2).count("timeout") >= 5
    raised = _policy_text().replace(
        "rate_limit_rps: 1, burst: 3", "rate_limit_rps: 500, burst: 500"
    )
    with inside(lab.server):
        Nft().apply(_compiled(raised))
    try:
        assert lab.probe(lan, lan.server_v4, 22, count=12, timeout=0.5) == ["ok"] * 12
    finally:
        with inside(lab.server):
            Nft().apply(_compiled(_policy_text()))


def _compiled(text: str) -> Ruleset:
    result = parse_policy(text, "policy.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return compile_policy(result.policy)


def test_blocked_source_is_dropped_across_a_reapply_until_its_timeout(lab: Lab) -> None:
    from aitherfwd.nft import builders as b  # noqa: PLC0415

    world = lab.clients[1]
    assert lab.tcp(world, world.server_v4, 443) == "ok"
    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "default.yaml").policy
    assert policy is not None
    with inside(lab.server):
        nft = Nft()
        nft.add_elements("block_v4", [b.timed(world.v4, 3)])
        nft.add_elements("block_v6_net", [b.timed(b.prefix(f"fd77:0:0:{world.index}::", 64), 3)])
    assert lab.tcp(world, world.server_v4, 443, timeout=0.5) == "timeout"
    assert lab.tcp(world, world.server_v6, 443, timeout=0.5) == "timeout"
    with inside(lab.server):  # a different policy, then the original again: bans stay
        nft = Nft()
        nft.apply(compile_policy(policy))
        assert lab.tcp(world, world.server_v4, 443, timeout=0.5) == "timeout"
    until(
        lambda: lab.tcp(world, world.server_v4, 443, timeout=0.3) == "ok",
        10,
        "the kernel timeout to release the block",
    )
    assert lab.tcp(world, world.server_v6, 443) == "ok"
