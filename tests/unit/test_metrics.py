"""Metrics without a kernel: the stats, the snapshot, the collector, the netlink counter
decoder and the HTTP endpoint (on loopback). Time is faked where it matters."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import socket
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nftcounters
from aitherfwd.adapters.metrics import (
    BootTimeProcessCollector,
    MetricsServer,
    parse_listen,
    registry,
    render,
)
from aitherfwd.config import ConfigError, DaemonConfig, parse_config
from aitherfwd.daemon import main as daemon_main
from aitherfwd.daemon.services import Services
from aitherfwd.daemon.state import Generation
from aitherfwd.daemon.telemetry import Telemetry
from aitherfwd.dynamic.blocks import Block, BlockTable
from aitherfwd.stats import MAX_LABEL_VALUES, OTHER, Histogram, Stats
from aitherfwd.testing import FakeClock
from aitherfwd.testing import fake_daemon as wired
from tests.unit.helpers import ok

NOW = 1_700_000_000.0
POLICY = """\
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
  - {name: api, dest_ports: [8443], protocol: tcp, action: allow, rate_limit_rps: 10}
  - {name: secrets, zone: external, dest_services: [Secrets], action: reject}
"""


def fake_daemon(stats: Stats | None = None, blocks: BlockTable | None = None) -> Services:
    """The daemon's services on fakes, in the state these tests read: generation 3 of
    POLICY, two applied reloads, one audit write error, four dropped notifications."""
    fake = wired(Path(tempfile.mkdtemp(prefix="afw-metrics-")), "version: 1\n")
    s = fake.services
    policy = ok(POLICY)
    s.generations.generation = Generation(
        3, policy, cast(Any, None), cast(Any, None), Path("p.yaml"), NOW
    )
    s.generations.reloads = {"applied": 2}
    s.ports.audit.errors = 1
    fake.notifier.stats.dropped = 4
    if blocks is not None:
        s.blocks.table = blocks
    if stats is not None:
        s = dataclasses.replace(s, stats=stats)
    return s


def exposition(telemetry: Telemetry) -> str:
    reg, collector = registry()
    return render(reg, collector, telemetry.snapshot()).decode()


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.startswith("process_")
    }


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_counts_are_cumulative_with_an_inf_bucket() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    value = h.value()
    assert value.cumulative == (2, 3, 4)
    assert value.count == 4
    assert value.total == pytest.approx(3.65)


def test_threat_types_beyond_the_cap_count_as_other() -> None:
    stats = Stats()
    for i in range(MAX_LABEL_VALUES + 30):
        stats.threat(f"TYPE_{i}")
    stats.threat("TYPE_0")
    events = dict(stats.events().threat_events)
    assert len(events) == MAX_LABEL_VALUES + 1
    assert events[OTHER] == 30
    assert events["TYPE_0"] == 2


def test_rule_counters_map_to_rules_actions_and_the_default() -> None:
    reads = {
        "rule_web": (3, 180),
        "default": (5, 300),
        "ratelimit_api": (7, 420),
        "blocked": (11, 660),
    }
    telemetry = Telemetry(fake_daemon(), lambda: reads, FakeClock().monotonic)
    asyncio.run(telemetry.refresh())
    got = values(exposition(telemetry))
    assert got[("aitherfwd_rule_packets_total", (("action", "allow"), ("rule", "web")))] == 3
    assert got[("aitherfwd_rule_bytes_total", (("action", "deny"), ("rule", "default")))] == 300
    assert got[("aitherfwd_rule_packets_total", (("action", "reject"), ("rule", "secrets")))] == 0
    assert got[("aitherfwd_rule_ratelimited_packets_total", (("rule", "api"),))] == 7
    assert got[("aitherfwd_dropped_packets_total", (("reason", "blocklist"),))] == 11
    assert got[("aitherfwd_policy_generation", ())] == 3
    assert got[("aitherfwd_reloads_total", (("result", "applied"),))] == 2
    assert got[("aitherfwd_reloads_total", (("result", "rejected"),))] == 0
    assert got[("aitherfwd_audit_write_errors_total", ())] == 1
    assert got[("aitherfwd_notifications_dropped_total", ())] == 4


def test_counters_are_read_at_most_once_per_max_age() -> None:
    clock, reads = FakeClock(), []

    def reader() -> nftcounters.Counters:
        reads.append(clock.monotonic())
        return {}

    telemetry = Telemetry(fake_daemon(), reader, clock.monotonic)

    async def scrapes() -> None:
        await asyncio.gather(*(telemetry.refresh() for _ in range(5)))
        await telemetry.refresh()
        clock.advance(1.5)
        await telemetry.refresh()

    asyncio.run(scrapes())
    assert reads == [1000.0, 1001.5]


def test_hundred_thousand_distinct_offenders_add_no_series() -> None:
    stats, blocks = Stats(), BlockTable()
    telemetry = Telemetry(fake_daemon(stats, blocks), dict, FakeClock().monotonic)
    before = exposition(telemetry)
    offenders = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(100_000)]
    blocks.put([Block(a, NOW + 60, "reputation", "reputation", NOW) for a in offenders], NOW)
    blocks.put([Block("2001:db8::/64", None, "x", "reputation", NOW)], NOW)
    for i, _ in enumerate(offenders):
        stats.threat(("SENTRY_PORT_SCAN", "SENTRY_BRUTE_FORCE")[i % 2])
    stats.blocked("reputation", len(offenders))
    stats.escalated("temporary")
    after = exposition(telemetry)
    assert series(after) == series(before) | {
        ("aitherfwd_threat_events_total", (("type", "SENTRY_BRUTE_FORCE"),)),
        ("aitherfwd_threat_events_total", (("type", "SENTRY_PORT_SCAN"),)),
    }
    got = values(after)
    assert got[("aitherfwd_blocked_addresses", (("family", "ipv4"), ("kind", "temporary")))] == (
        100_000
    )
    assert got[("aitherfwd_blocked_addresses", (("family", "ipv6"), ("kind", "permanent")))] == 1
    assert got[("aitherfwd_blocks_total", (("reason", "reputation"),))] == 100_000
    assert not any("10.0." in name or "10.0." in str(labels) for name, labels in series(after))


def test_block_kinds_follow_puts_replacements_removals_and_expiry() -> None:
    table = BlockTable()
    table.put([Block("203.0.113.7", NOW + 60, "r", "reputation", NOW)], NOW)
    table.put([Block("2001:db8::1", None, "r", "manual", NOW)], NOW)
    assert table.kinds()[("ipv4", "temporary")] == 1
    assert table.kinds()[("ipv6", "manual")] == 1
    table.put([Block("203.0.113.7", None, "r", "reputation", NOW)], NOW)  # now permanent
    assert table.kinds()[("ipv4", "temporary")] == 0
    assert table.kinds()[("ipv4", "permanent")] == 1
    table.remove("2001:db8::1", NOW)
    table.load([Block("198.51.100.1", NOW + 5, "r", "kernel", NOW)])
    assert table.kinds()[("ipv6", "manual")] == 0
    assert table.kinds()[("ipv4", "temporary")] == 1
    table.prune(NOW + 10)
    assert table.kinds()[("ipv4", "temporary")] == 0
    assert sum(table.kinds().values()) == len(table) == 1


def _newobj(table: str, name: str, packets: int, nbytes: int) -> bytes:
    data = nl.attr(nftcounters.NFTA_COUNTER_BYTES, struct.pack("!Q", nbytes)) + nl.attr(
        nftcounters.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)
    )
    attrs = (
        nl.attr(nftcounters.NFTA_OBJ_TABLE, table.encode() + b"\0")
        + nl.attr(nftcounters.NFTA_OBJ_NAME, name.encode() + b"\0")
        + nl.attr(nftcounters.NFTA_OBJ_TYPE, struct.pack("!I", 1))
        + nl.attr(nftcounters.NFTA_OBJ_DATA | 0x8000, data)  # NLA_F_NESTED
    )
    msg_type = nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, nl.NFT_MSG_NEWOBJ)
    return nl.message(msg_type, nl.NLM_F_MULTI, 1, attrs, family=nl.NFPROTO_INET)


def test_netlink_counter_dump_is_decoded_and_other_tables_ignored() -> None:
    done = nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1)
    out: nftcounters.Counters = {}
    first = _newobj("aitherfwd", "rule_web", 3, 180) + _newobj("other", "rule_x", 1, 1)
    assert not nftcounters.parse(first, "aitherfwd", out)
    assert nftcounters.parse(_newobj("aitherfwd", "default", 2**40, 7) + done, "aitherfwd", out)
    assert out == {"rule_web": (3, 180), "default": (2**40, 7)}
    error = struct.pack("=IHHIIi", 36, nl.NLMSG_ERROR, 0, 1, 0, -errno.ENOENT) + bytes(16)
    with pytest.raises(nl.NetlinkError) as refused:
        nftcounters.parse(error, "aitherfwd", {})
    assert refused.value.errno == errno.ENOENT
    request = nftcounters.request()
    assert struct.unpack_from("=IH", request) == (len(request), (10 << 8) | nl.NFT_MSG_GETOBJ)


def test_metrics_listen_is_checked_and_on_by_default() -> None:
    assert DaemonConfig().metrics_listen == "127.0.0.1:9466"
    assert parse_config('[metrics]\nlisten = ""\n', int, int).metrics_listen == ""
    assert parse_config('[metrics]\nlisten = "[::1]:9500"\n', int, int).metrics_listen
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be"):
        parse_config('[metrics]\nlisten = "9466"\n', int, int)
    assert parse_listen("[::1]:9466") == ("::1", 9466)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_endpoint_answers_metrics_and_refuses_the_rest() -> None:
    telemetry = Telemetry(fake_daemon(), dict, FakeClock().monotonic)
    port = _free_port()

    async def exchange(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def scenario() -> list[bytes]:
        server = MetricsServer(f"127.0.0.1:{port}", telemetry.fresh_snapshot)
        await server.start()
        try:
            return [
                await exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                await exchange(b"GET /other HTTP/1.1\r\n\r\n"),
                await exchange(b"POST /metrics HTTP/1.1\r\n\r\n"),
            ]
        finally:
            await server.close()

    metrics, other, post = asyncio.run(scenario())
    assert metrics.startswith(b"HTTP/1.1 200 OK")
    assert b"aitherfwd_build_info" in metrics and b"text/plain; version=0.0.4" in metrics
    assert other.startswith(b"HTTP/1.1 404")
    assert post.startswith(b"HTTP/1.1 405")


def test_process_metrics_do_not_need_proc_stat() -> None:
    """The unit hides /proc/stat (ProcSubset=pid); the start time must not depend on it."""
    ours = {m.name: m.samples[0].value for m in BootTimeProcessCollector(registry=None).collect()}
    theirs = {m.name: m.samples[0].value for m in ProcessCollector(registry=None).collect()}
    assert abs(ours["process_start_time_seconds"] - theirs["process_start_time_seconds"]) < 2
    assert ours["process_resident_memory_bytes"] > 0


def test_an_endpoint_that_cannot_listen_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = Telemetry(fake_daemon(), dict, FakeClock().monotonic)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        assert asyncio.run(daemon_main._metrics(busy, telemetry)) is None
    assert asyncio.run(daemon_main._metrics("", telemetry)) is None  # off
    assert asyncio.run(daemon_main._metrics("nonsense", telemetry)) is None
    assert "metrics endpoint not started" in caplog.text


def test_conntrack_gauges_come_from_detection() -> None:
    daemon = fake_daemon()
    detection = SimpleNamespace(entries=lambda: 40, max_per_source=lambda: 7)
    telemetry = Telemetry(
        dataclasses.replace(daemon, detection=detection), dict, FakeClock().monotonic
    )
    snap = telemetry.snapshot()
    assert (snap.conntrack_entries, snap.conntrack_max_per_source) == (40, 7)
