"""Fleet batches with a real nats-server and real daemons, judged by real packets: 10,000
blocks in one request on A (three batch messages) reach B's kernel, B's management
address among them is filtered out, the attacker's packets drop on B; with the bus
stopped, a batch of expired and live blocks is caught up by B with the expired skipped; a
block of a batch lifted later is not resurrected for a late joiner; a batch published
again is applied once. The topology is tests/kernel/test_fleet.py's."""

from __future__ import annotations

import ipaddress
import time

import pytest

from aitherfwd.fleet import batch as fb
from lab.wait import until
from tests.kernel.test_fleet import Setup, _put, block_of, fleet
from tests.kernel.test_fleet import setup as setup  # noqa: PLC0414 - the shared fixture

pytestmark = pytest.mark.kernel
BULK = 10_000


def _bulk(sample: list[str]) -> list[dict[str, str]]:
    """BULK blocks: the sample addresses and filler in 10.96.0.0/16 (no one sends from it)."""
    filler = [str(ipaddress.IPv4Address(0x0A600000 + i)) for i in range(BULK - len(sample))]
    return [{"address": a, "ttl": "10m"} for a in sample + filler]


def test_ten_thousand_blocks_in_one_request_reach_another_hosts_kernel(setup: Setup) -> None:
    s = setup
    a, b = s.start("a"), s.start("b")
    assert s.passes("b", "10.77.4.3")
    # B's management address is one element of the batch: filtered out there alone
    res = a.post("/v1/fleet/blocks", {"blocks": _bulk(["10.77.4.3", "10.77.4.9"])})
    assert res["count"] == BULK and res["shared"] == BULK
    until(lambda: fleet(b)["applied"] == BULK - 1, 30, "the whole batch on B")
    assert fleet(b)["skipped"] == {"protected": 1} and fleet(b)["invalid"] == 0
    assert s.dropped("b", "10.77.4.3")
    assert s.passes("b", "10.77.4.9") and block_of(b, "10.77.4.9") is None
    assert fleet(a)["published"] == BULK and fleet(a)["backlog"] == 0
    blocked = [e for e in b.audit_events() if e["event"] == "blocked"]
    assert sum(e["count"] for e in blocked) == BULK - 1 and len(blocked) <= 3  # ≤ a chunk each


def test_a_batch_caught_up_after_a_partition_skips_its_expired_blocks_and_stays_lifted(
    setup: Setup,
) -> None:
    s = setup
    a, b = s.start("a"), s.start("b")
    s.hub.stop()
    until(lambda: not fleet(a)["connected"], 10, "A noticing the bus is gone")
    batch = [
        {"address": "10.77.4.5", "ttl": "10m"},
        {"address": "10.77.4.6", "ttl": "2s"},
        {"address": "10.77.4.7", "ttl": "10m"},
        {"address": "10.77.4.8", "ttl": "10m"},
    ]
    assert a.post("/v1/fleet/blocks", {"blocks": batch})["count"] == 4
    assert fleet(a)["backlog"] == 4  # one outbox row, four decisions
    until(lambda: block_of(a, "10.77.4.6") is None, 10, "the 2 s block expiring on A")
    s.hub.start()
    until(lambda: s.dropped("b", "10.77.4.5"), 20, "B catching up after the partition")
    assert block_of(b, "10.77.4.6") is None
    assert fleet(b)["skipped"].get("expired") == 1 and fleet(b)["applied"] == 3
    # one block of the batch lifted fleet-wide, after it: a late joiner never gets it
    assert a.cli("unblock", "10.77.4.7", "--fleet").returncode == 0
    until(lambda: s.web("b", "10.77.4.7") == "ok", 10, "the unblock on B")
    c = s.start("c")
    until(lambda: s.dropped("c", "10.77.4.5"), 10, "C getting the live blocks")
    until(lambda: fleet(c)["lag"] == 0 and fleet(c)["applied"] >= 2, 10, "C caught up")
    held = {blk["address"] for blk in c.ok("GET", "/v1/blocks")["blocks"]}
    assert held == {"10.77.4.5", "10.77.4.8"}
    assert s.passes("c", "10.77.4.7")
    # the same batch published twice (two messages, one id): applied once
    again = fb.encode("a.00000000000000ff", "a", time.time(), [("10.77.4.3", None, "again")])
    for subject in ("afw.lab.d.a.b.00000000000000fe", "afw.lab.d.a.b.00000000000000ff"):
        res = _put(s, subject, "a", again)
        assert res.returncode == 0 and b"refused" not in res.stdout, res
    until(lambda: s.dropped("c", "10.77.4.3"), 10, "C applying the republished batch")
    until(lambda: fleet(c)["skipped"].get("duplicate") == 1, 10, "C skipping it the second time")
    # as an attacker on the bus: b may not publish a batch under a's name, and the stream
    # refuses a message over a batch's size (it never reaches a consumer's memory)
    forged = fb.encode("a.00000000000000aa", "a", time.time(), [("10.77.4.4", None, "x")])
    assert b"refused" in _put(s, "afw.lab.d.a.b.00000000000000aa", "b", forged).stdout
    huge = b"x" * (fb.MAX_BATCH_BYTES + 4096)
    assert b"refused" in _put(s, "afw.lab.d.b.b.00000000000000bb", "b", huge).stdout
    assert fleet(c)["invalid"] == 0 and s.passes("c", "10.77.4.4")
