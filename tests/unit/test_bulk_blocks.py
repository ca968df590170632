"""A bulk block request taken as columns (control/bulkblocks.py, `BlockList`, the table's
`_put_list`, the store's one-group rows) gives what the item-by-item path gives: the same
answer, table, store rows and history, kernel elements and audit lines — through the
shipped fakes, no root, milliseconds."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.memory import LARGE_BATCH
from aitherfwd.control import jsonbody
from aitherfwd.control.bulkblocks import BULK_MIN_ITEMS, BulkBlocks, bulk_v4
from aitherfwd.control.schema import BlockSpec, parse_blocks
from aitherfwd.daemon import views
from aitherfwd.dynamic.blockrecords import BlockList
from aitherfwd.dynamic.blocks import BlockError
from aitherfwd.errors import ApplyError, RequestError
from aitherfwd.testing import FakeDaemon, fake_daemon

POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
POOL = [str(ipaddress.IPv4Address(0x0A3C0000 + i)) for i in range(4000)]  # 10.60.0.0/20


def body(addresses: Sequence[str], **shared: Any) -> dict[str, Any]:
    return {"blocks": [{"address": a, **shared} for a in addresses]}


# --- the columns -------------------------------------------------------------------------------


def test_the_usual_shape_is_taken_as_columns() -> None:
    addresses = POOL[:BULK_MIN_ITEMS]
    got = bulk_v4(body(addresses, ttl="1h", reason="scan"))
    assert got == BulkBlocks(
        list(addresses), [ipaddress.IPv4Address(a).packed for a in addresses], 3600, "scan"
    )
    bare = bulk_v4(body(addresses))
    assert bare is not None and (bare.ttl, bare.reason) == (None, "manual")


@pytest.mark.parametrize(
    "change",
    [
        lambda items: items[:-1],  # too few for columns
        lambda items: [*items[:-1], {**items[-1], "ttl": "2h"}],  # a second TTL
        lambda items: [*items[:-1], {**items[-1], "ttl": True}],  # 1 and true are one to a set
        lambda items: [{**i, "ttl": 1} for i in items[:-1]] + [{**items[-1], "ttl": 1.0}],
        lambda items: [*items[:-1], {**items[-1], "reason": "other"}],
        lambda items: [*items[:-1], {"address": items[-1]["address"]}],  # a field fewer
        lambda items: [*items[:-1], {**items[-1], "adress": "x"}],  # a field more
        lambda items: [*items[:-1], {**items[-1], "address": "2001:db8::1"}],
        lambda items: [*items[:-1], {**items[-1], "address": "010.0.0.1"}],  # not canonical
        lambda items: [*items[:-1], {**items[-1], "address": "10.0.0.0/24"}],
        lambda items: [*items[:-1], {**items[-1], "address": 167772161}],
        lambda items: [*items[:-1], {**items[-1], "reason": ["a"]}],  # unhashable
        lambda items: [*items[:-1], "10.0.0.1"],
    ],
)
def test_any_other_shape_is_left_to_the_item_by_item_parser(change: Any) -> None:
    items = body(POOL[:BULK_MIN_ITEMS], ttl=600, reason="x")["blocks"]
    assert bulk_v4({"blocks": change(items)}) is None


def test_a_bad_shared_ttl_is_the_error_the_item_by_item_parser_names_first() -> None:
    request = body(POOL[:BULK_MIN_ITEMS], ttl="soon")
    with pytest.raises(RequestError) as fast:
        bulk_v4(request)
    with pytest.raises(RequestError) as slow:
        parse_blocks(request)
    assert str(fast.value) == str(slow.value) and "blocks[0].ttl" in str(fast.value)


def test_a_block_lists_views_are_block_view_of_each() -> None:
    blocks = BlockList(POOL[:1200], 1e9 + 60, "x", "manual", 1e9)
    assert views.block_views(blocks, 1000) == [views.block_view(b) for b in list(blocks)[:1000]]
    assert blocks[3] == list(blocks)[3] and blocks[-1].key == POOL[1199]


# --- the duplicate-key check of large bodies ------------------------------------------------------


def test_a_key_twice_deep_in_a_large_body_is_found_and_located() -> None:
    items = body(POOL[:3000], ttl="1h")["blocks"]
    text = json.dumps({"blocks": items})
    bad = text.replace('"address": "10.60.11.100", "ttl"', '"address": "10.60.11.100", "address"')
    with pytest.raises(RequestError) as err:
        jsonbody.decode(bad.encode())
    assert 'key "address" is given twice' in str(err.value)
    column = bad.index('"address"', bad.index("10.60.11.100")) + 1
    assert f"line 1 column {column}" in str(err.value)


def test_colons_and_quotes_inside_strings_are_not_pairs() -> None:
    reason = 'a "quoted": reason: with {braces} and [brackets]\\\\'
    items = [{"address": f"fd77::{i:x}", "reason": reason} for i in range(500)]
    raw = json.dumps({"blocks": items, "note": "::::"}).encode()
    assert jsonbody.decode(raw) == json.loads(raw)


# --- the same blocks either way ------------------------------------------------------------------


def _state(fake: FakeDaemon) -> dict[str, Any]:
    s = fake.services
    now = fake.clock.now()
    db = sqlite3.connect(s.ports.store.path)
    try:
        history = db.execute(
            "SELECT key, reason, source, started_at, expires_at, ended_at, end_reason "
            "FROM block_history ORDER BY key, id"
        ).fetchall()
    finally:
        db.close()
    return {
        "active": s.blocks.table.active(now),
        "counts": s.blocks.table.counts(now),
        "stored": sorted(s.ports.store.load_blocks(now)),
        "history": history,
        "kernel": fake.kernel.elements("block_v4"),
        "audit": fake.audit_events(),
    }


def _requests(seed: int) -> list[tuple[float, dict[str, Any]]]:
    """(seconds to advance first, request body) of a random sequence over one pool: fresh
    blocks, re-blocks, repeats inside a request, blocks that lapsed."""
    rng = random.Random(seed)
    out = []
    for _ in range(5):
        addresses = rng.sample(POOL, rng.randrange(BULK_MIN_ITEMS, 2500))
        if rng.random() < 0.4:
            addresses += rng.sample(addresses, 40)  # named twice: its first place counts
        shared = rng.choice([{"ttl": 600}, {"ttl": "1h", "reason": "scan"}, {}])
        out.append((rng.choice([0.0, 5.0, 700.0]), body(addresses, **shared)))
    return out


Submit = Callable[[dict[str, Any]], Awaitable[None]]


def _both_ways(
    tmp_path: Path, steps: Callable[[FakeDaemon, Submit], Awaitable[None]], in_place: bool = True
) -> list[tuple[list[list[Any]], dict[str, Any]]]:
    """`steps` run on two fake daemons after a cold start: `submit` hands a bulk request to
    the blocks service as columns on the first, item by item on the second. Each one's
    answers and state."""
    out = []
    for columns in (True, False):
        (tmp_path / str(columns)).mkdir()
        fake = fake_daemon(tmp_path / str(columns), POLICY)
        fake.kernel.timeout_updates = in_place
        answers: list[list[Any]] = []

        async def submit(
            request: dict[str, Any],
            fake: FakeDaemon = fake,
            columns: bool = columns,
            answers: list[list[Any]] = answers,
        ) -> None:
            bulk = bulk_v4(request)
            assert bulk is not None
            specs: Sequence[BlockSpec] | BulkBlocks = bulk if columns else parse_blocks(request)
            made = await fake.services.blocks.block(specs)
            assert isinstance(made, BlockList) == columns
            answers.append(list(made))

        async def run(fake: FakeDaemon = fake, submit: Submit = submit) -> None:
            task = asyncio.get_running_loop().create_task(fake.services.writer.run())
            try:
                await fake.services.generations.cold_start()
                await steps(fake, submit)
            finally:
                task.cancel()

        asyncio.run(run())
        out.append((answers, _state(fake)))
        fake.services.ports.store.close()
    return out


def _same(results: list[tuple[list[list[Any]], dict[str, Any]]]) -> dict[str, Any]:
    (fast_answers, fast), (slow_answers, slow) = results
    assert fast_answers == slow_answers
    for part in slow:
        assert fast[part] == slow[part], part
    return fast


@pytest.mark.parametrize(("seed", "in_place"), [(1, True), (2, False), (3, True), (4, False)])
def test_columns_and_items_give_the_same_blocks(tmp_path: Path, seed: int, in_place: bool) -> None:
    async def steps(fake: FakeDaemon, submit: Submit) -> None:
        for advance, request in _requests(seed):
            fake.clock.advance(advance)
            await submit(request)

    state = _same(_both_ways(tmp_path, steps, in_place))
    assert len(state["kernel"]) == len(state["active"]) > 0


def test_one_address_named_in_every_item_is_one_block_either_way(tmp_path: Path) -> None:
    """300 items, one address: the columns keep one block (not a run), as the items do."""

    async def steps(fake: FakeDaemon, submit: Submit) -> None:
        await submit(body([POOL[7]] * 300, ttl=600))
        await submit(body([POOL[7]] * 300 + POOL[:10], ttl="1h"))

    state = _same(_both_ways(tmp_path, steps))
    assert [b.key for b in state["active"]] == sorted(POOL[:10])
    assert len(state["kernel"]) == 10


def test_large_requests_written_from_a_thread_give_the_same_blocks(tmp_path: Path) -> None:
    """Requests of LARGE_BATCH or more are stored from a worker thread while the kernel
    takes them (`Store.blocks_writer`): a fresh one and a re-block, either path."""
    many = [str(ipaddress.IPv4Address(0x0A400000 + i)) for i in range(LARGE_BATCH + 2000)]

    async def steps(fake: FakeDaemon, submit: Submit) -> None:
        for request in (body(many, ttl=600), body(many[1000:], ttl="2h", reason="again")):
            fake.clock.advance(30)
            await submit(request)

    state = _same(_both_ways(tmp_path, steps))
    assert len(state["stored"]) == len(many) == len(state["kernel"])
    again = set(many[1000:])
    assert {(b.key in again, b.reason) for b in state["stored"]} == {
        (True, "again"),
        (False, "manual"),
    }


def test_a_protected_address_in_columns_is_refused_as_item_by_item(tmp_path: Path) -> None:
    request = body([*POOL[:300], "10.77.9.7", "10.77.9.1"], ttl=600)
    fake = fake_daemon(tmp_path, POLICY)
    errors = []

    async def run() -> None:
        s = fake.services
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            bulk = bulk_v4(request)
            assert bulk is not None
            for specs in (bulk, parse_blocks(request)):
                with pytest.raises(BlockError) as err:
                    await s.blocks.block(specs)
                errors.append(str(err.value))
        finally:
            task.cancel()

    asyncio.run(run())
    assert errors[0] == errors[1] and "10.77.9.7 overlaps 10.77.9.0/24" in errors[0]
    assert len(fake.services.blocks.table) == 0 and fake.kernel.elements("block_v4") == {}
    fake.services.ports.store.close()


def test_a_refused_bulk_request_leaves_the_same_state_either_way(tmp_path: Path) -> None:
    """The kernel refuses a bulk request that re-blocks some held addresses: table, store,
    history and kernel are as before it, whichever path took it."""

    async def steps(fake: FakeDaemon, submit: Submit) -> None:
        await fake.services.blocks.block(parse_blocks(body(POOL[:300], ttl=600, reason="before")))
        fake.kernel.refuse_next("Could not process rule: No space left on device")
        with pytest.raises(ApplyError):
            await submit(body(POOL[200:1500], ttl="1h", reason="after"))

    state = _same(_both_ways(tmp_path, steps))
    assert {b.key for b in state["active"]} == set(POOL[:300])
    assert {b.reason for b in state["stored"]} == {"before"}
