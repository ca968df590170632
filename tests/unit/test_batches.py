"""Element commands regrouped into bounded batches (the cold start's restore)."""

from __future__ import annotations

from aitherfwd.nft import builders as b


def _sizes(batches: list[list[b.Json]]) -> list[list[tuple[str, int]]]:
    return [
        [(c["add"]["element"]["name"], len(c["add"]["element"]["elem"])) for c in batch]
        for batch in batches
    ]


def test_commands_are_split_where_a_batch_fills_and_keep_their_order() -> None:
    v4 = b.add(b.element("block_v4", [f"10.0.0.{i}" for i in range(7)]))
    v6 = b.add(b.element("block_v6", [f"fd77::{i}" for i in range(4)]))
    batches = b.element_batches([v4, v6], 5)
    assert _sizes(batches) == [
        [("block_v4", 5)],
        [("block_v4", 2), ("block_v6", 3)],
        [("block_v6", 1)],
    ]
    flat = [e for batch in batches for c in batch for e in c["add"]["element"]["elem"]]
    assert flat == v4["add"]["element"]["elem"] + v6["add"]["element"]["elem"]
    assert batches[0][0]["add"]["element"]["table"] == "aitherfwd"


def test_small_restores_stay_one_batch_and_nothing_gives_none() -> None:
    v4 = b.add(b.element("block_v4", ["10.0.0.1", "10.0.0.2"]))
    assert b.element_batches([v4], 50_000) == [[v4]]
    assert b.element_batches([], 50_000) == []
    flush = {"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "x"}}}
    assert b.element_batches([flush, v4], 1) == [
        [flush, b.add(b.element("block_v4", ["10.0.0.1"]))],
        [b.add(b.element("block_v4", ["10.0.0.2"]))],
    ]
