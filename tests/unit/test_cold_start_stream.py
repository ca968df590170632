"""The cold start's streamed restore (issue 15: 1,000,000 persisted bans in ≤ 3 s): the
store's rows go straight into the block table as tuples, a chunk at a time, each chunk's
element adds made as it is loaded and read in a thread of its own while the kernel takes
the chunk before; the first, small chunk travels with the table."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.daemon import elements
from aitherfwd.daemon.prefetch import prefetched
from aitherfwd.dynamic.blocks import Block, BlockRow, BlockTable
from aitherfwd.testing import FakeDaemon, fake_daemon

NOW = 1_700_000_000.0
POLICY = "version: 1\nsettings: {default_policy: allow, admin_ports: [22]}\n"


def _v4(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0B000000 + i))


def _rows() -> list[BlockRow]:
    """Rows as the store holds them: two requests, a permanent block, IPv6, prefixes."""
    rows: list[BlockRow] = [(_v4(i), NOW + 600, "scan", "reputation", NOW - 5) for i in range(40)]
    rows += [(_v4(100 + i), NOW + 60, "flood", "detection", NOW - 1) for i in range(30)]
    rows += [
        ("2001:db8::7", None, "forever", "manual", NOW - 9),
        ("203.0.113.0/24", NOW + 600, "scan", "reputation", NOW - 5),
        ("2001:db8:1::/48", None, "forever", "manual", NOW - 9),
    ]
    return rows


CORRUPT: list[Any] = [
    ("010.0.0.1", None, "leading zero", "manual", NOW),  # not canonical
    ("2001:DB8::1", None, "upper case", "manual", NOW),  # not canonical
    ("999.1.1.1", None, "no address", "manual", NOW),
    ("garbage/33", None, "no network", "manual", NOW),
    ("10.0.0.1/8", None, "host bits", "manual", NOW),
    (None, None, "no key", "manual", NOW),
    (b"\x0a\x00\x00\x01", None, "a blob", "manual", NOW),
]


def _state(table: BlockTable) -> tuple[Any, ...]:
    return (
        [(b.key, b.expires_at, b.reason, b.source, b.created_at) for b in table.active(NOW)],
        table.counts(),
        table.kinds(),
    )


def test_rows_load_the_same_table_as_blocks_and_corrupt_rows_are_skipped() -> None:
    from_rows, from_blocks = BlockTable(), BlockTable()
    rows = _rows()
    assert from_rows.load_rows(CORRUPT[:3] + rows + CORRUPT[3:]) == len(rows) + len(CORRUPT)
    from_blocks.load(Block(*r) for r in rows)
    assert _state(from_rows) == _state(from_blocks)
    assert len(from_rows) == len(rows)
    # the expiry index holds them: due blocks leave at their time, earliest first
    gone = from_rows.prune(NOW + 60)
    assert sorted(b.key for b in gone) == sorted(_v4(100 + i) for i in range(30))
    gone = from_rows.prune(NOW + 600)
    assert len(gone) == 41 and {b.key for b in gone} >= {"203.0.113.0/24"}
    assert {b.key for b in from_rows.active(NOW + 600)} == {"2001:db8::7", "2001:db8:1::/48"}
    assert from_rows.counts()["block_v4"] == 0 and sum(from_rows.kinds().values()) == 2


def test_rows_of_one_request_share_one_record() -> None:
    table = BlockTable()
    table.load_rows(_rows())
    records = {id(table._singles[table._key(_v4(i))]) for i in range(40)}  # type: ignore[index]
    assert len(records) == 1


def _elements(batch: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for cmd in batch:
        body = cmd["add"]["element"]
        out.setdefault(body["name"], []).extend(body["elem"])
    return out


def test_the_load_streams_in_chunks_the_first_small_and_every_block_is_restored() -> None:
    table = BlockTable()
    rows: list[BlockRow] = [(_v4(i), NOW + 100, "bulk", "manual", NOW) for i in range(2_600)]
    stream = table.load_batches(iter(_rows()[-3:] + rows), NOW + 40, 100, 1_000)
    first = next(stream)
    assert len(table) == 100  # lazy: only the first chunk is read yet
    batches = [first, *stream]
    sizes = [sum(len(v) for v in _elements(b).values()) for b in batches]
    assert sizes == [100, 1_000, 1_000, 503]
    assert len(table) == 2_603
    seen: dict[str, list[Any]] = {}
    for batch in batches:
        for name, elems in _elements(batch).items():
            seen.setdefault(name, []).extend(elems)
    assert seen["block_v6"] == ["2001:db8::7"]  # permanent: no timeout
    assert seen["block_v4_net"] == [
        {"elem": {"val": {"prefix": {"addr": "203.0.113.0", "len": 24}}, "timeout": 560}}
    ]
    assert seen["block_v6_net"] == [{"prefix": {"addr": "2001:db8:1::", "len": 48}}]
    assert seen["block_v4"][0] == {"elem": {"val": "11.0.0.0", "timeout": 60}}
    assert len(seen["block_v4"]) == 2_600


def test_a_chunk_of_corrupt_rows_yields_no_batch_and_the_stream_ends_on_a_short_chunk() -> None:
    table = BlockTable()
    rows = CORRUPT[:4] + [(_v4(i), None, "kept", "manual", NOW) for i in range(4)]
    batches = list(table.load_batches(iter(rows), NOW, 4, 4))
    assert [sum(len(v) for v in _elements(b).values()) for b in batches] == [4]
    assert len(table) == 4
    assert list(BlockTable().load_batches(iter([]), NOW, 4, 4)) == []


def test_prefetched_items_come_in_order_from_another_thread() -> None:
    threads: list[str] = []

    def items() -> Iterator[int]:
        for i in range(50):
            threads.append(threading.current_thread().name)
            yield i

    assert list(prefetched(items(), name="t-prefetch")) == list(range(50))
    assert set(threads) == {"t-prefetch"}


def test_a_producer_error_reaches_the_consumer_where_it_happened() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("disk I/O error")

    stream = prefetched(items())
    assert next(stream) == 1
    with pytest.raises(OSError, match="disk I/O error"):
        next(stream)


def test_a_consumer_that_stops_early_lets_the_producer_finish() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(20):
            made.append(i)
            yield i

    stream = prefetched(items(), depth=1)
    assert next(stream) == 0
    stream.close()  # e.g. the kernel refused a batch: the table must still be whole
    assert made == list(range(20))


# --- through the daemon's services, on the fake kernel -----------------------------------


def _seeded(tmp_path: Path, count: int) -> FakeDaemon:
    fake = fake_daemon(tmp_path, POLICY)
    now = fake.clock.now()
    store = fake.services.ports.store
    store.save_blocks(Block(_v4(i), now + 3600, "seeded", "manual", now) for i in range(count))
    store.save_blocks([Block("2001:db8::9", None, "v6", "manual", now)])
    store.save_blocks([Block("198.51.100.0/24", now - 1, "expired", "manual", now - 99)])
    return fake


def _cold_start(fake: FakeDaemon) -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
        finally:
            task.cancel()

    asyncio.run(main())


def _block_elements(batch: list[Any]) -> int:
    return sum(
        len(c["add"]["element"]["elem"])
        for c in batch
        if "add" in c and "element" in c["add"] and c["add"]["element"]["name"].startswith("block")
    )


def test_a_cold_start_restores_every_stored_block_the_first_chunk_with_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aitherfwd.daemon.coldstart.FIRST_RESTORE_BATCH", 500)
    monkeypatch.setattr("aitherfwd.daemon.coldstart.RESTORE_BATCH", 2_000)
    fake = _seeded(tmp_path, 4_999)
    _cold_start(fake)
    assert len(fake.kernel.elements("block_v4")) == 4_999
    assert fake.kernel.values("block_v6") == {"2001:db8::9"}
    assert fake.kernel.elements("block_v4_net") == {}  # expired: not restored...
    history = fake.services.ports.store.history(["198.51.100.0/24"])
    assert history[0].end_reason == "expired"  # ...and closed in the history
    restores = [b for b in fake.kernel.batches if _block_elements(b)]
    assert any("table" in c.get("add", {}) for c in restores[0])  # with the table
    assert [_block_elements(b) for b in restores] == [500, 2_000, 2_000, 500]
    assert len(fake.services.blocks.table) == 5_000
    assert fake.services.generations.start_seconds > 0
    fake.services.ports.store.close()


def test_a_refused_restore_batch_still_leaves_the_table_whole_and_the_kernel_reconciled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(elements, "RESTORE_BATCH", 2_000)
    monkeypatch.setattr("aitherfwd.daemon.coldstart.FIRST_RESTORE_BATCH", 500)
    monkeypatch.setattr("aitherfwd.daemon.coldstart.RESTORE_BATCH", 2_000)
    fake = _seeded(tmp_path, 6_000)
    fake.kernel.refuse_next("Cannot allocate memory", after=1)  # the second restore batch
    started = time.perf_counter()
    _cold_start(fake)
    assert time.perf_counter() - started < 30
    assert fake.kernel.refusals == {}  # the refusal happened
    assert len(fake.services.blocks.table) == 6_001  # every row read, none lost
    assert len(fake.kernel.elements("block_v4")) == 6_000  # the refused part reconciled
    fake.services.ports.store.close()
