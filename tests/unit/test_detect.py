"""The detector, pure and on a fake clock: port scans, SYN floods and connection limits
become threat events only past their thresholds and grace periods."""

from __future__ import annotations

import ipaddress

from aitherfwd.clock import FakeClock
from aitherfwd.dynamic import detect
from aitherfwd.dynamic.detect import Denial, Detector
from aitherfwd.policy.model import IPAddress, ScanSettings, Settings, Severity

SCANNER = ipaddress.ip_address("203.0.113.7")
OTHER = ipaddress.ip_address("2001:db8::1")
SETTINGS = Settings(
    max_connections_per_ip=20,
    syn_flood_threshold=50,
    scan=ScanSettings(ports=10, window=10),
    detection_grace=2,
)


def _denied(src: IPAddress, port: int, kind: str = "denied") -> Denial:
    return Denial(src, 6, port, kind, "default")


def _none(_: IPAddress) -> int:
    return 0


def test_ten_distinct_denied_ports_within_the_window_are_a_port_scan() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for port in range(1, 10):
        assert det.denied(_denied(SCANNER, port), clock.now()) == []
        clock.advance(0.1)
    assert det.denied(_denied(SCANNER, 1), clock.now()) == []  # a repeat is not a new port
    (threat,) = det.denied(_denied(SCANNER, 10), clock.now())
    assert threat.type == detect.PORT_SCAN and threat.severity is Severity.HIGH
    assert threat.source == SCANNER and "10 distinct denied ports" in threat.detail
    assert det.stats.port_scans == 1 and det.following()["scan_sources"] == 0


def test_ports_spread_wider_than_the_window_are_not_a_scan() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for port in range(1, 30):
        assert det.denied(_denied(SCANNER, port), clock.now()) == []
        clock.advance(1.5)


def test_sources_are_counted_apart_and_ipv6_too() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    out = []
    for port in range(1, 11):
        out += det.denied(_denied(SCANNER, port), clock.now())
        out += det.denied(_denied(OTHER, port + 100), clock.now())
    assert sorted(str(t.source) for t in out) == sorted([str(SCANNER), str(OTHER)])


def test_a_syn_flood_longer_than_the_grace_period_is_a_threat() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for _ in range(8):  # 1.75 s of drops: still within the grace period
        det.denied(_denied(SCANNER, 443, "synflood"), clock.now())
        assert det.tick(clock.now(), _none) == []
        clock.advance(0.25)
    det.denied(_denied(SCANNER, 443, "synflood"), clock.now())
    (threat,) = det.tick(clock.now(), _none)
    assert threat.type == detect.SYN_FLOOD and threat.severity is Severity.HIGH


def test_a_short_burst_stays_the_kernels_business() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    det.denied(_denied(SCANNER, 443, "synflood"), clock.now())
    det.denied(_denied(SCANNER, 22, "connlimit"), clock.now())
    clock.advance(5)
    assert det.tick(clock.now(), _none) == []
    assert det.following() == {"scan_sources": 0, "flooding_sources": 0, "limited_sources": 0}


def test_half_open_connections_over_the_threshold_count_as_a_flood() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    assert det.tick(clock.now(), _none, [OTHER]) == []
    clock.advance(2)
    (threat,) = det.tick(clock.now(), _none, [OTHER])
    assert threat.type == detect.SYN_FLOOD and threat.source == OTHER


def test_refused_beyond_the_limit_and_still_at_it_after_the_grace_is_a_medium_threat() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    det.denied(_denied(SCANNER, 22, "connlimit"), clock.now())
    clock.advance(1)
    assert det.tick(clock.now(), lambda s: 20) == []
    clock.advance(1.5)  # no refusal since, but still holding 20 connections
    (threat,) = det.tick(clock.now(), lambda s: 20 if s == SCANNER else 0)
    assert threat.type == detect.CONNTRACK_LIMIT and threat.severity is Severity.MEDIUM
    assert "20 tracked now" in threat.detail
    clock.advance(3)
    assert det.tick(clock.now(), lambda s: 20) == []  # one event per episode


def test_memory_is_bounded() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for i in range(detect.MAX_SOURCES + 50):
        det.denied(_denied(ipaddress.ip_address(i + 1), 80), clock.now())
    assert det.following()["scan_sources"] == detect.MAX_SOURCES


def test_audit_sampling_is_a_token_bucket() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    clock.advance(10)
    taken = sum(det.sample(clock.now(), 10) for _ in range(100))
    assert taken == 20  # a burst of two seconds' worth
    clock.advance(1)
    assert sum(det.sample(clock.now(), 10) for _ in range(100)) == 10


def test_a_flood_that_stopped_within_the_grace_period_is_not_a_threat() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for _ in range(4):  # one second of drops, then the source is blocked for its scan
        det.denied(_denied(SCANNER, 443, "synflood"), clock.now())
        clock.advance(0.25)
    for _ in range(12):
        assert det.tick(clock.now(), _none) == []
        clock.advance(0.25)


def _syn(src: IPAddress, sport: int, port: int = 443) -> Denial:
    return Denial(src, 6, port, "synflood", "-", sport=sport)


def test_syn_retries_of_connections_the_kernel_dropped_are_not_a_flood() -> None:
    """200 connections opened at once (a keep-alive pool): the kernel drops the 150 SYNs
    over its meter, and again their retries 1, 2 and 3 s later; nothing new was tried
    after the first moment, so no flood (issue 14, false-positive suite)."""
    clock, det = FakeClock(), Detector(SETTINGS)
    for dropped in (150, 100, 50, 0):
        for sport in range(40_000 + 200 - dropped, 40_200):
            assert det.denied(_syn(SCANNER, sport), clock.now()) == []
        for _ in range(4):
            assert det.tick(clock.now(), _none) == []
            clock.advance(0.25)
    assert det.following()["flooding_sources"] == 0 and det.stats.syn_floods == 0


def test_new_connection_attempts_over_the_meter_past_the_grace_period_are_a_flood() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    sport = 1024
    out: list[detect.Threat] = []
    for _ in range(10):  # 2.25 s of drops of ever new source ports (hping3 --flood)
        for _ in range(20):
            sport += 1
            det.denied(_syn(SCANNER, sport), clock.now())
        out += det.tick(clock.now(), _none)
        clock.advance(0.25)
    (threat,) = out
    assert threat.type == detect.SYN_FLOOD and "new connection attempts" in threat.detail


def test_the_memory_of_attempts_is_bounded_per_source() -> None:
    clock, det = FakeClock(), Detector(SETTINGS)
    for sport in range(3 * detect.MAX_ATTEMPTS):
        det.denied(_syn(SCANNER, sport), clock.now())
    assert 0 < len(det._floods[SCANNER].attempts) <= detect.MAX_ATTEMPTS
