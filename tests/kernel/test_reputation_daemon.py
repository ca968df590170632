"""The reputation ladder in the real daemon, with real packets: threat events → temporary
blocks that the kernel lifts on time → a permanent block that survives a restart."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.nft import Nft
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.kernel.test_daemon import CONFIG, POLICY, TCP_PORTS

pytestmark = pytest.mark.kernel

REPUTATION = """\
reputation:
  threshold: 5
  temp_block: 2s
  permanent_after: 3
  memory: 1h
  decay_half_life: 1h
  ipv6_prefix: 64
  never_block: [10.77.2.0/24]
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Lab, DaemonProc]]:
    with Lab(clients_wanted=2) as lab:
        lab.listen(TCP_PORTS)
        d = DaemonProc(lab.server, tmp_path, POLICY + REPUTATION, CONFIG).start()
        try:
            yield lab, d
        finally:
            d.cleanup()


def _events(d: DaemonProc, source: str, n: int, severity: str = "low") -> dict[str, object]:
    return d.ok(
        "POST",
        "/v1/threats",
        {"events": [{"type": "SENTRY_PORT_SCAN", "source_ip": source, "severity": severity}] * n},
    )


def test_threat_events_climb_the_ladder_to_a_permanent_block(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    lan = lab.clients[0]
    assert _events(d, lan.v4, 4)["blocked"] == []
    assert lab.tcp(lan, lan.server_v4, 443) == "ok"
    first = _events(d, lan.v4, 1)["blocked"]
    assert [b["address"] for b in first] == [lan.v4]  # type: ignore[index]
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    until(lambda: lab.tcp(lan, lan.server_v4, 443, timeout=0.3) == "ok", 6, "temp block lifted")
    _events(d, lan.v4, 5)
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    until(lambda: lab.tcp(lan, lan.server_v4, 443, timeout=0.3) == "ok", 6, "second lifted")
    third = _events(d, lan.v4, 5)["blocked"]
    assert third[0]["expires_at"] is None  # type: ignore[index]
    kinds = [e["event"] for e in d.audit_events() if e["event"].startswith("escalation")]
    assert kinds == ["escalation_temporary", "escalation_temporary", "escalation_permanent"]
    # a "reboot": the daemon dies, the table is gone; the permanent block comes back
    d.stop(signal.SIGKILL)
    with inside(lab.server):
        Nft().delete_table()
    assert lab.tcp(lan, lan.server_v4, 443) == "ok"
    d.start()
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    st = d.ok("GET", "/v1/status")
    assert st["reputation"]["offenders"] >= 1
    (blk,) = d.ok("GET", "/v1/blocks")["blocks"]
    assert blk["expires_at"] is None and blk["source"] == "reputation"


def test_high_severity_ipv6_blocks_the_whole_prefix(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    lan = lab.clients[0]
    lab.add_address(lan, "fd77:0:0:1::99/64")
    blocked = _events(d, lan.v6, 1, "high")["blocked"]
    assert blocked[0]["address"] == "fd77:0:0:1::/64"  # type: ignore[index]
    assert lab.tcp(lan, lan.server_v6, 443, timeout=0.5) == "timeout"
    assert lab.tcp(lan, lan.server_v6, 443, timeout=0.5, source="fd77:0:0:1::99") == "timeout"
    assert lab.tcp(lan, lan.server_v4, 443) == "ok"


def test_never_block_and_roles(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    world = lab.clients[1]
    answer = _events(d, world.v4, 1, "critical")
    assert answer["blocked"] == [] and answer["protected"] == [world.v4]
    assert lab.tcp(world, world.server_v4, 443) == "ok"
    res = d.cli("threat", "--type", "X", "--source", "10.77.1.5", user="nobody")
    assert res.returncode == 1 and "E-FORBIDDEN" in res.stderr
    for bad in [
        {"type": "a b", "source_ip": "10.77.1.5"},
        {"type": "X", "source_ip": "10.77.1.5", "severity": "huge"},
        {"type": "X", "source_ip": "10.77.1.5; flush ruleset"},
    ]:
        status, _ = d.request("POST", "/v1/threats", bad)
        assert status == 400
