"""The block table's compact part: a bulk request's IPv4 addresses held as one run (sorted
4-byte ints), found, lifted, re-blocked and expired exactly as the dict would, at a few
bytes per block (no root)."""

from __future__ import annotations

import gc
import ipaddress
import random
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest

from aitherfwd.dynamic import blocks as blocks_module
from aitherfwd.dynamic.blocks import Block, BlockTable
from aitherfwd.dynamic.singles import MAX_RUNS, RUN_MIN, Run

NOW = 1_700_000_000.0


def _v4(i: int) -> str:
    return str(ipaddress.IPv4Address(0x0B000000 + i))


def _v6(i: int) -> str:
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + i))


def _blocks(
    keys: list[str], ttl: float | None, reason: str = "bulk", at: float = NOW
) -> list[Block]:
    return [Block(k, None if ttl is None else at + ttl, reason, "manual", at) for k in keys]


def test_a_bulk_request_holds_its_ipv4_addresses_as_one_run_of_a_few_bytes_each() -> None:
    table = BlockTable()
    v4 = [_v4(i) for i in range(20_000)]
    blocks = _blocks(v4 + [_v6(i) for i in range(10)], 600)
    keys = table.checked_keys([b.key for b in blocks], NOW)
    gc.collect()
    tracemalloc.start()
    table.put(blocks, NOW, keys)
    del keys
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert [run.live for run in table._singles.runs] == [20_000]
    assert len(table._singles.loose) == 10  # IPv6 stays in the dict
    assert held / 20_000 < 12  # 4-byte address + live byte (a dict entry costs ≈ 85)
    assert len(table) == 20_010 and table.counts()["block_v4"] == 20_000
    assert table.kinds()[("ipv4", "manual")] == 20_000
    got = table.get(v4[12_345], NOW)
    assert got == Block(v4[12_345], NOW + 600, "bulk", "manual", NOW)
    assert table.covering(ipaddress.ip_address(v4[0]), NOW) is not None
    assert table.get(_v4(20_000), NOW) is None


def test_lifted_and_reblocked_addresses_leave_their_run_and_the_rest_expire_with_it() -> None:
    table = BlockTable()
    v4 = [_v4(i) for i in range(3000)]
    table.put(_blocks(v4, 60), NOW)
    for key in v4[:100]:
        assert table.remove(key, NOW + 1) is not None
        assert table.get(key, NOW + 1) is None
    assert table.remove(v4[0], NOW + 1) is None
    table.put(_blocks(v4[100:1600], 600, "again", NOW + 2), NOW + 2)  # a second run
    assert [run.live for run in table._singles.runs] == [1400, 1500]
    kept = table.get(v4[100], NOW + 2)
    assert kept is not None and kept.reason == "again" and kept.created_at == NOW
    gone = table.prune(NOW + 60)
    assert sorted(b.key for b in gone) == sorted(v4[1600:])
    assert [run.live for run in table._singles.runs] == [1500]
    assert len(table) == 1500 and table.counts()["block_v4"] == 1500
    assert len(table.prune(NOW + 602)) == 1500
    assert len(table) == 0 and sum(table.kinds().values()) == 0
    assert table._singles.runs == [] and table._heap == []


def test_beyond_max_runs_the_smallest_run_moves_into_the_dict_and_still_expires() -> None:
    table = BlockTable()
    for r in range(MAX_RUNS + 2):
        size = RUN_MIN + 10 * r
        keys = [_v4(100_000 * r + i) for i in range(size)]
        table.put(_blocks(keys, 60 * (r + 1), f"request {r}"), NOW)
    assert len(table._singles.runs) == MAX_RUNS
    assert len(table._singles.loose) == RUN_MIN + (RUN_MIN + 10)  # the two smallest
    first = table.get(_v4(5), NOW)
    assert first is not None and first.reason == "request 0"
    last = [_v4(5_000_000 + i) for i in range(RUN_MIN)]  # the smallest: into the dict itself
    table.put(_blocks(last, 30, "last"), NOW)
    assert len(table._singles.runs) == MAX_RUNS
    assert len(table._singles.loose) == 3 * RUN_MIN + 10
    assert sorted(b.key for b in table.prune(NOW + 30)) == sorted(last)
    for r in range(MAX_RUNS + 2):
        gone = table.prune(NOW + 60 * (r + 1))
        assert len(gone) == RUN_MIN + 10 * r and {b.reason for b in gone} == {f"request {r}"}
    assert len(table) == 0 and table._singles.runs == [] and not table._singles.loose


def test_prune_of_one_run_does_not_walk_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    table = BlockTable()
    for r in range(4):
        keys = [_v4(100_000 * r + i) for i in range(2000)]
        table.put(_blocks(keys, 60 * (r + 1), f"request {r}"), NOW)
    walked: list[str] = []
    real = Run.held

    def held(run: Run) -> Any:
        walked.append(run.batch.reason)
        return real(run)

    monkeypatch.setattr(Run, "held", held)
    assert len(table.prune(NOW + 60)) == 2000
    assert walked == ["request 0"]


def _state(table: BlockTable, now: float, probes: list[str], listing: Sequence[str] = ()) -> Any:
    few = table.checked_keys(probes, now, check=False)  # looked up one by one
    many = table.checked_keys(listing, now, check=False)  # matched against the runs at once
    return (
        table.unknown(few, now),
        table.unknown(many, now),
        _elements(table.restore_keys(few, now)),
        _elements(table.restore_keys(many, now)),
        len(table),
        table.counts(),
        table.kinds(),
        [tuple(b) for b in table.active(now)],
        [table.get(k, now) for k in probes],
        sorted((str(k), e) for k, e in table.expiries()),
        sorted(table.missing(set(), now), key=str),
        _elements(table.restore_commands(now)),
    )


def _elements(cmds: list[Any]) -> list[tuple[str, str]]:
    return sorted(
        (c["add"]["element"]["name"], str(e)) for c in cmds for e in c["add"]["element"]["elem"]
    )


@pytest.mark.parametrize("seed", range(4))
def test_runs_and_the_dict_hold_the_same_table_through_random_changes(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same changes to a table with runs and to one that keeps everything in its dict
    (RUN_MIN out of reach) leave the same blocks, books, expiries and restores."""
    rng = random.Random(seed)
    pool = [_v4(i) for i in range(6000)] + [_v6(i) for i in range(300)]
    with_runs, plain = BlockTable(), BlockTable()
    plain.update_in_place = with_runs.update_in_place = bool(seed % 2)
    now, had_runs = NOW, False
    listing = rng.sample(pool, 2000)  # a drift repair's listing: the runs matched at once
    for step in range(24):
        now += rng.choice([0, 1, 7, 30])
        op = rng.random()
        if op < 0.45:  # a bulk request: mostly a run, part re-blocks, sometimes a repeat
            keys = rng.sample(pool, rng.randint(RUN_MIN, 2500))
            keys += rng.sample(keys, rng.choice([0, 0, 3]))
            ttl = rng.choice([60, 120, 600, None])
            blocks = _blocks(keys, ttl, f"step {step}", now)
        elif op < 0.75:  # a few
            blocks = _blocks(
                rng.sample(pool, rng.randint(1, 40)), rng.choice([60, None]), "few", now
            )
        else:
            blocks = []
            for key in rng.sample(pool, 200):
                assert (plain.remove(key, now) is None) == (with_runs.remove(key, now) is None)
        if blocks:
            texts = [b.key for b in blocks]
            a = with_runs.held(with_runs.checked_keys(texts, now), texts, now)
            with monkeypatch.context() as m:
                m.setattr(blocks_module, "RUN_MIN", 10**9)
                b = plain.held(plain.checked_keys(texts, now), texts, now)
                plain.put(blocks, now)
            assert {k: v.block(k) for k, v in a.items()} == {k: v.block(k) for k, v in b.items()}
            with_runs.put(blocks, now)
            had_runs = had_runs or bool(with_runs._singles.runs)
        gone = sorted(tuple(b) for b in with_runs.prune(now))  # a run's own order: sorted
        assert gone == sorted(tuple(b) for b in plain.prune(now))
        probes = rng.sample(pool, 50)
        assert _state(with_runs, now, probes, listing) == _state(plain, now, probes, listing)
    assert not plain._singles.runs
    assert had_runs  # the test did exercise runs


def test_a_cold_start_moves_large_restored_groups_into_runs_and_changes_nothing_else() -> None:
    rows: list[tuple[str, float | None, str, str, float]]
    rows = [(_v4(i), NOW + 60, "big", "manual", NOW) for i in range(3000)]
    rows += [(_v4(10_000 + i), None, "forever", "reputation", NOW) for i in range(1500)]
    rows += [(_v4(20_000 + i), NOW + 90, "small", "manual", NOW) for i in range(100)]
    rows += [(_v6(i), NOW + 60, "big", "manual", NOW) for i in range(50)]
    rows += [("198.51.100.0/24", NOW + 60, "big", "manual", NOW)]
    table, reference = BlockTable(), BlockTable()
    reference.load_rows(iter(rows))
    for _ in table.load_batches(iter(rows), NOW, 1000, 1000):
        pass
    assert sorted(run.live for run in table._singles.runs) == [1500, 3000]
    assert len(table._singles.loose) == 150  # the small group and IPv6
    probes = [_v4(5), _v4(10_005), _v4(20_005), _v6(7), _v4(99_999)]
    assert _state(table, NOW, probes) == _state(reference, NOW, probes)
    gone = sorted(tuple(b) for b in table.prune(NOW + 60))
    assert gone == sorted(tuple(b) for b in reference.prune(NOW + 60))
    assert len(gone) == 3000 + 50 + 1
    assert table.remove(_v4(10_005), NOW + 61) is not None
    assert _state(table, NOW + 61, probes) != _state(reference, NOW + 61, probes)
    assert reference.remove(_v4(10_005), NOW + 61) is not None
    assert _state(table, NOW + 91, probes) == _state(reference, NOW + 91, probes)
    assert table.compact() == 0  # nothing left to move


def test_a_put_with_a_key_that_is_no_block_key_changes_nothing() -> None:
    table = BlockTable()
    v4 = [_v4(i) for i in range(2000)]
    table.put(_blocks(v4, 600), NOW)
    bad = _blocks([v4[0], "010.0.0.1"], 60, "again")
    with pytest.raises(ValueError, match=r"'010\.0\.0\.1' is not a canonical block key"):
        table.put(bad, NOW)
    held = table.get(v4[0], NOW)
    assert held is not None and held.reason == "bulk"
    assert len(table) == 2000 and table.counts()["block_v4"] == 2000


def test_a_few_keys_against_a_large_run_are_bisected_never_a_walk_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = BlockTable()
    v4 = [_v4(i) for i in range(40_000)]
    table.put(_blocks(v4, 600), NOW)

    def walked(run: Run) -> Any:
        raise AssertionError(f"a run of {len(run.keys)} was walked")

    monkeypatch.setattr(Run, "held", walked)
    table.put(_blocks([v4[7]], 60, "single"), NOW + 1)  # a single ban out of the run
    moved = table.get(v4[7], NOW + 1)
    assert moved is not None and moved.reason == "single" and moved.created_at == NOW
    table.put(_blocks([_v4(50_000)], 60, "new"), NOW + 1)
    texts = v4[100:2100]  # 2,000 keys: a twentieth of the run, bisected
    assert len(table.held(table.checked_keys(texts, NOW + 2), texts, NOW + 2)) == 2000
    table.put(_blocks(texts, 900, "again"), NOW + 2)
    assert table.remove(v4[5], NOW + 3) is not None
    assert len(table) == 40_000 and table.counts()["block_v4"] == 40_000
    monkeypatch.undo()
    assert sorted(run.live for run in table._singles.runs) == [2000, 40_000 - 2002]
