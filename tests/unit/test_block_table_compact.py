"""The compact block table: packed keys, shared batch records, the expiry heap, lazy
restore batches, and what a block costs in memory (tracemalloc, no root)."""

from __future__ import annotations

import gc
import ipaddress
import tracemalloc
from typing import Any

from aitherfwd.dynamic.blocks import Block, BlockTable

NOW = 1_700_000_000.0


def _v4(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0B000000 + i))


def _v6(i: int) -> str:
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + i))


def _blocks(keys: list[str], ttl: float | None = 3600, reason: str = "bench") -> list[Block]:
    expires = NOW + ttl if ttl is not None else None
    return [Block(k, expires, reason, "reputation", NOW) for k in keys]


class _NoWalk(dict[Any, Any]):
    """A dict that refuses to be walked: proves `prune` goes through the expiry index."""

    def __iter__(self) -> Any:
        raise AssertionError("the table was walked")

    def items(self) -> Any:
        raise AssertionError("the table was walked")

    def values(self) -> Any:
        raise AssertionError("the table was walked")

    def keys(self) -> Any:
        raise AssertionError("the table was walked")


def test_many_blocks_of_both_families_and_prefixes_are_found_and_counted() -> None:
    table = BlockTable()
    v4, v6 = [_v4(i) for i in range(5000)], [_v6(i) for i in range(5000)]
    table.put(_blocks(v4) + _blocks(v6, None) + _blocks(["198.51.100.0/24"], 60), NOW)
    assert len(table) == 10_001
    assert table.counts() == {
        "block_v4": 5000,
        "block_v6": 5000,
        "block_v4_net": 1,
        "block_v6_net": 0,
    }
    assert table.kinds()[("ipv4", "temporary")] == 5001
    assert table.kinds()[("ipv6", "permanent")] == 5000
    got = table.get(_v6(4999), NOW + 10**6)
    assert got == Block(_v6(4999), None, "bench", "reputation", NOW)
    blk = table.covering(ipaddress.ip_address("198.51.100.77"), NOW + 59)
    assert blk is not None and blk.key == "198.51.100.0/24"
    assert table.covering(ipaddress.ip_address("198.51.100.77"), NOW + 60) is None
    assert [b.key for b in table.active(NOW)][:2] == ["11.0.0.0", "11.0.0.1"]


def test_ipv4_and_ipv6_keys_never_collide_and_only_canonical_text_finds_a_block() -> None:
    table = BlockTable()
    table.put(_blocks(["10.0.0.1"]), NOW)
    assert table.get("::a00:1", NOW) is None  # the same 32 bits, the other family
    table.put(_blocks(["::a00:1"]), NOW)
    assert len(table) == 2 and table.counts()["block_v6"] == 1
    for text in ["010.0.0.1", "10.0.0.01", "::A00:1", "0::a00:1", "10.0.0.1/32", "nonsense"]:
        assert table.get(text, NOW) is None, text


def test_reblock_moves_a_block_to_its_new_expiry_and_the_old_one_does_not_take_it() -> None:
    table = BlockTable()
    keys = [_v4(i) for i in range(1000)]
    table.put(_blocks(keys, 60), NOW)
    table.put(_blocks(keys[:10], 600, "again"), NOW + 30)
    gone = table.prune(NOW + 60)
    assert len(gone) == 990 and {b.key for b in gone} == set(keys[10:])
    kept = table.get(keys[0], NOW + 60)
    assert kept is not None and kept.reason == "again" and kept.created_at == NOW
    assert [b.key for b in table.prune(NOW + 630)] == keys[:10]
    assert len(table) == 0 and table.counts()["block_v4"] == 0


def test_unblocked_keys_are_skipped_when_their_batch_expires() -> None:
    table = BlockTable()
    keys = [_v4(i) for i in range(100)]
    table.put(_blocks(keys, 60), NOW)
    for key in keys[:50]:
        assert table.remove(key, NOW + 1) is not None
    assert table.remove(keys[0], NOW + 1) is None
    assert len(table.prune(NOW + 60)) == 50
    assert len(table) == 0 and sum(table.kinds().values()) == 0


def test_prune_pops_due_batches_from_the_index_without_walking_the_table() -> None:
    table = BlockTable()
    for batch in range(100):  # 100 requests of 1,000 blocks, a minute apart in expiry
        keys = [_v4(batch * 1000 + i) for i in range(1000)]
        table.put(_blocks(keys, 60 * (batch + 1), f"request {batch}"), NOW)
    table._singles.loose = _NoWalk(table._singles.loose)  # the proof needs the inside
    assert table.prune(NOW + 59) == []
    gone = table.prune(NOW + 120)
    assert len(gone) == 2000 and {b.reason for b in gone} == {"request 0", "request 1"}
    assert len(table) == 98_000


def test_repeated_reblocks_keep_the_index_bounded() -> None:
    table = BlockTable()
    keys = [_v4(i) for i in range(1000)]
    for r in range(200):  # the same addresses, a new expiry each time
        table.put(_blocks(keys, 3600 + r), NOW)
    heap = table._heap  # what the index holds
    assert len(heap) < 200
    assert sum(len(b.keys or ()) for b in heap) <= 3 * len(keys)
    assert len(table.prune(NOW + 10**6)) == 1000


def test_a_key_twice_in_one_request_is_one_block_and_expires_once() -> None:
    table = BlockTable()
    table.put(_blocks(["192.0.2.1", "192.0.2.1", "2001:db8::/64", "2001:db8::/64"], 60), NOW)
    table.load(_blocks(["192.0.2.1"], 60))  # the same row again, as a revert does
    assert len(table) == 2 and table.counts()["block_v4"] == 1
    assert sum(table.kinds().values()) == 2
    assert len(table.prune(NOW + 60)) == 2
    assert len(table) == 0 and sum(table.kinds().values()) == 0
    assert table._heap == []  # every batch left the index with its blocks


def test_put_of_new_and_held_keys_keeps_the_books_of_a_table_loaded_row_by_row() -> None:
    held = [_v4(i) for i in range(5)] + [_v6(1)]
    new = [_v4(i) for i in range(5, 500)] + [_v6(i) for i in range(2, 50)] + ["198.51.100.0/24"]
    table, reference = BlockTable(), BlockTable()
    table.update_in_place = True
    table.put(_blocks(held, 60, "old"), NOW)
    cmds = table.put(_blocks(held + new, 600), NOW + 1, table.checked_keys(held + new, NOW))
    reference.load(_blocks(held + new, 600))
    assert table.counts() == reference.counts() and table.kinds() == reference.kinds()
    assert [b.key for b in table.active(NOW + 1)] == [b.key for b in reference.active(NOW + 1)]
    adds = {c["add"]["element"]["name"]: list(c["add"]["element"]["elem"]) for c in cmds}
    assert len(cmds) == 3 and len(adds["block_v4"]) == 500 and len(adds["block_v6"]) == 49
    assert adds["block_v4"][0] == {"elem": {"val": _v4(0), "timeout": 599}}
    assert adds["block_v4_net"] == [
        {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "timeout": 599}}
    ]
    assert len(table.prune(NOW + 600)) == len(held + new) and len(table) == 0
    assert table._heap == []


def test_restore_batches_are_lazy_bounded_and_complete() -> None:
    table = BlockTable()
    v4 = [_v4(i) for i in range(2500)]
    table.put(_blocks(v4, 100) + _blocks(["2001:db8::1"], None), NOW)
    table.put(_blocks(["203.0.113.0/24"], 100), NOW)
    batches = table.restore_batches(NOW + 40, 1000)
    assert not isinstance(batches, list)
    seen: dict[str, list[Any]] = {}
    sizes = []
    for batch in batches:
        size = 0
        for cmd in batch:
            body = cmd["add"]["element"]
            seen.setdefault(body["name"], []).extend(body["elem"])
            size += len(body["elem"])
        sizes.append(size)
    assert sizes == [1000, 1000, 502]
    assert len(seen["block_v4"]) == 2500
    assert seen["block_v4"][0] == {"elem": {"val": "11.0.0.0", "timeout": 60}}
    assert seen["block_v6"] == ["2001:db8::1"]
    assert seen["block_v4_net"] == [
        {"elem": {"val": {"prefix": {"addr": "203.0.113.0", "len": 24}}, "timeout": 60}}
    ]
    everything = table.restore_commands(NOW)  # one list: a re-apply in one transaction
    assert sum(len(c["add"]["element"]["elem"]) for c in everything) == 2502


def _bytes_per_block(keys: list[str], ttl: float | None) -> float:
    blocks = _blocks(keys, ttl)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = BlockTable()
        table.load(blocks)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == len(keys)
    return used / len(keys)


def test_a_single_address_block_costs_bytes_not_kilobytes() -> None:
    """A request's blocks share one record: each costs its packed key, its dict slot and
    its place in the expiry index (≈ 75-95 bytes; a Block per block cost ≈ 210)."""
    assert _bytes_per_block([_v4(i) for i in range(100_000)], 3600) <= 100
    assert _bytes_per_block([_v6(i) for i in range(50_000)], 3600) <= 120
    assert _bytes_per_block([_v4(i) for i in range(50_000)], None) <= 100
