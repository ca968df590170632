"""The block table and the control schemas: pure, with time passed in."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from aitherfwd.codes import http_status
from aitherfwd.control import schema
from aitherfwd.durations import format_duration, parse_duration
from aitherfwd.dynamic.blocks import Block, BlockError, BlockTable, canonical_v4
from aitherfwd.errors import RequestError

NOW = 1_700_000_000.0


def _block(text: str, ttl: float | None = 900) -> Block:
    return Block.of(ipaddress.ip_network(text), NOW + ttl if ttl else None, "test", "manual", NOW)


def test_single_addresses_go_to_hash_sets_and_prefixes_to_interval_sets() -> None:
    assert _block("203.0.113.7/32").set_name == "block_v4"
    assert _block("2001:db8::1/128").set_name == "block_v6"
    assert _block("203.0.113.0/24").set_name == "block_v4_net"
    assert _block("2001:db8::/64").set_name == "block_v6_net"


def test_block_expires_at_its_time_and_lookup_sees_prefixes() -> None:
    table = BlockTable()
    table.put([_block("203.0.113.0/24", 60), _block("198.51.100.7/32", None)], NOW)
    assert table.lookup(ipaddress.ip_address("203.0.113.99"), NOW + 59) == (NOW + 60, "test")
    assert table.lookup(ipaddress.ip_address("203.0.113.99"), NOW + 60) is None
    assert table.lookup(ipaddress.ip_address("198.51.100.7"), NOW + 10**6) == (None, "test")
    assert [b.key for b in table.active(NOW + 61)] == ["198.51.100.7"]


def test_prune_finds_every_expiry_in_order_whatever_was_added_when() -> None:
    table = BlockTable()
    table.load([_block("192.0.2.1/32", 20), _block("192.0.2.2/32", None)])
    table.put([_block("192.0.2.3/32", 10)], NOW)
    assert table.prune(NOW + 5) == []
    assert [b.key for b in table.prune(NOW + 10)] == ["192.0.2.3"]
    table.put([_block("192.0.2.4/32", 12)], NOW)  # earlier than anything left
    assert [b.key for b in table.prune(NOW + 12)] == ["192.0.2.4"]
    assert table.prune(NOW + 19) == []
    table.load([_block("192.0.2.5/32", 15)])  # loaded in bulk, already due
    assert [b.key for b in table.prune(NOW + 19)] == ["192.0.2.5"]
    assert [b.key for b in table.prune(NOW + 20)] == ["192.0.2.1"]
    assert table.prune(NOW + 10**9) == [] and len(table) == 1
    assert table.counts()["block_v4"] == 1


def test_protected_ranges_and_overlapping_prefixes_are_refused() -> None:
    table = BlockTable(protected=[ipaddress.ip_network("192.0.2.10/32")])
    for bad in ["127.0.0.1/32", "::1/128", "192.0.2.0/24", "0.0.0.0/0"]:
        with pytest.raises(BlockError) as info:
            table.check(ipaddress.ip_network(bad), NOW)
        assert info.value.code == "E-PROTECTED"
    table.put([_block("10.0.0.0/16")], NOW)
    with pytest.raises(BlockError, match="overlaps the existing prefix block"):
        table.check(ipaddress.ip_network("10.0.1.0/24"), NOW)
    table.check(ipaddress.ip_network("10.0.1.5/32"), NOW)  # single addresses may overlap


def test_reblocking_replaces_the_element_whatever_the_kernel_holds() -> None:
    table = BlockTable()
    first = table.put([_block("203.0.113.7/32", 60)], NOW)
    assert len(first) == 1
    again = table.put([_block("203.0.113.7/32", 600)], NOW + 30)
    assert [next(iter(c)) for c in again] == ["add", "delete", "add"]
    assert again[-1]["add"]["element"]["elem"][0]["elem"]["timeout"] == 570


def test_restore_commands_carry_remaining_timeouts() -> None:
    table = BlockTable()
    table.put([_block("203.0.113.7/32", 100), _block("2001:db8::/64", None)], NOW)
    cmds = table.restore_commands(NOW + 40)
    elems = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in cmds}
    assert list(elems["block_v4"]) == [{"elem": {"val": "203.0.113.7", "timeout": 60}}]
    assert elems["block_v6_net"] == [{"prefix": {"addr": "2001:db8::", "len": 64}}]


def test_durations() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90
    assert format_duration(5400) == "1h30m"
    for bad in ["15x", "", "m", "-5", True, 0, "1h 30m"]:
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_block_schema_is_strict() -> None:
    specs = schema.parse_blocks({"blocks": [{"address": "::ffff:203.0.113.7", "ttl": "15m"}]})
    assert specs[0].key == "203.0.113.7" and specs[0].ttl == 900
    for body in [
        {"address": "10.0.0.1", "bogus": 1},
        {"address": "10.0.0.300"},
        {"address": "10.0.0.1", "ttl": "soon"},
        {"blocks": "x"},
        [],
    ]:
        with pytest.raises(RequestError) as info:
            schema.parse_blocks(body)
        assert 400 <= http_status(info.value.code) < 500


def test_bulk_items_on_the_fast_path_parse_as_the_strict_parser_does() -> None:
    items: list[Any] = [
        {"address": "203.0.113.7", "ttl": "1h"},
        {"address": "203.0.113.8", "ttl": "1h"},  # the cached TTL and reason
        {"address": "203.0.113.9", "ttl": 60, "reason": "scan"},
        {"address": "2001:db8::/64"},
        {"address": "::ffff:203.0.113.10", "ttl": "1h"},
    ]
    bulk = schema.parse_blocks({"blocks": items})
    assert bulk == [schema.parse_block(item) for item in items]
    assert [s.ttl for s in bulk] == [3600, 3600, 60, None, 3600]
    bad: list[tuple[Any, str]] = [
        ({"address": "203.0.113.11", "ttl": "soon"}, "E-TTL"),
        ({"address": "203.0.113.11", "ttl": ["1h"]}, "E-TTL"),
        ({"address": "203.0.113.11", "ttl": "1h", "reason": "a\nb"}, "E-SCHEMA"),
        ({"address": "203.0.113.11", "ttl": True}, "E-TTL"),
        ({"address": "010.0.0.1", "ttl": "1h"}, "E-ADDRESS"),
        ({"address": "203.0.113.11", "ttl": "1h", "extra": 1}, "E-SCHEMA"),
        ("203.0.113.11", "E-SCHEMA"),
    ]
    for item, code in bad:
        with pytest.raises(RequestError) as info:
            schema.parse_blocks({"blocks": [*items, item]})
        assert info.value.code == code and "blocks[5]" in str(info.value), item


def test_evaluate_schema() -> None:
    spec = schema.parse_evaluate({"source_ip": "10.0.0.1", "dest_port": 443})
    assert spec.protocol == "tcp" and spec.direction == "inbound"
    for body in [
        {"source_ip": "10.0.0.0/8", "dest_port": 1},
        {"source_ip": "10.0.0.1"},
        {"source_ip": "10.0.0.1", "protocol": "icmp", "dest_port": 5},
        {"source_ip": "10.0.0.1", "dest_port": True},
    ]:
        with pytest.raises(RequestError):
            schema.parse_evaluate(body)


def test_the_ipv4_fast_path_takes_only_canonical_text() -> None:
    assert canonical_v4("203.0.113.7") == "203.0.113.7"
    for text in ["010.0.0.1", "1.2.3", "1.2.3.4 ", "0x1.2.3.4", "1.2.3.04", "\x00", "", "::1"]:
        assert canonical_v4(text) is None
    # whatever the fast path refuses, the strict parser decides
    for text in ["010.0.0.1", "\x00", "1.2.3.4%eth0"]:
        with pytest.raises(RequestError):
            schema.parse_blocks({"address": text})
