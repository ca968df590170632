"""Prefix blocks are indexed: which prefix holds an address, and which one a new prefix
overlaps, are binary searches — 20,000 IPv6 /64 reputation blocks (what a flood of reports
from one network's addresses leaves) must not make every check walk them all."""

from __future__ import annotations

import ipaddress
import time

import pytest

from aitherfwd.dynamic.blocks import Block, BlockError, BlockTable

NOW = 1_700_000_000.0


def table_of(keys: list[str], expires: float | None = None) -> BlockTable:
    t = BlockTable()
    t.load(Block(k, expires, "r", "reputation", NOW) for k in keys)
    return t


def v6_64(i: int) -> str:
    return f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64"


def test_twenty_thousand_prefixes_cost_a_search_not_a_walk() -> None:
    t = table_of([v6_64(i) for i in range(20_000)])
    started = time.perf_counter()
    for i in range(1_000):
        assert t.covering(ipaddress.ip_address(f"2001:db8:0:{i:x}::7"), NOW) is not None
        t.check(f"2001:db8:ffff:{i:x}::/64", NOW)  # disjoint: no error
    assert time.perf_counter() - started < 0.5  # a walk took ~50 ms per call


def test_overlaps_are_found_past_an_expired_neighbour() -> None:
    t = BlockTable()
    t.load([Block("10.0.1.0/24", None, "r", "manual", NOW)])
    t.load([Block("10.0.2.0/24", NOW + 1, "r", "manual", NOW)])  # expires first
    with pytest.raises(BlockError, match=r"10\.0\.1\.0/24"):
        t.check("10.0.0.0/16", NOW + 5)  # the expired /24 sits nearer in the index
    t.check("10.0.2.0/24", NOW + 5)  # what expired may be blocked again
    assert t.covering(ipaddress.ip_address("10.0.2.9"), NOW + 5) is None
    assert t.covering(ipaddress.ip_address("10.0.1.9"), NOW + 5) is not None


def test_an_unblocked_prefix_leaves_the_index() -> None:
    t = table_of(["192.0.2.0/24"])
    assert t.remove("192.0.2.0/24", NOW) is not None
    t.check("192.0.0.0/16", NOW)
    assert t.covering(ipaddress.ip_address("192.0.2.1"), NOW) is None
