"""Batches of fleet decisions: their wire format as an attacker on the bus meets it, and
their path through three hosts' real services on the in-memory JetStream — one message
per request (chunked), applied once, judged per decision, expired ones skipped, and never
resurrecting a block that was lifted later."""

from __future__ import annotations

import ipaddress
import itertools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from aitherfwd.control.schema import BlockSpec
from aitherfwd.fleet import batch as fb
from aitherfwd.fleet import messages as m
from aitherfwd.testing import FakeDaemon
from tests.unit.test_fleet import POLICY_A, Fleet, blocked, fleet_run

NOW = 1_700_000_000.0
SUBJECT = "afw.lab.d.web-1.b.0123456789abcdef"


def _new_id() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"web-1.{next(counter):016x}"


def _items(n: int, reason: str = "port scan") -> list[fb.Item]:
    return [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", NOW + 600, reason) for i in range(n)]


def _body(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "op": "batch",
        "id": "web-1.0123456789abcdef",
        "origin": "web-1",
        "at": NOW,
        "reasons": ["port scan"],
        "d": [["203.0.113.7", NOW + 600, 0], ["2001:db8::/64", None, 0]],
    }
    body.update(over)
    return body


def test_ten_thousand_blocks_are_three_chunks_that_decode_to_the_same_decisions() -> None:
    items = _items(10_000)
    out = fb.chunks("web-1", NOW, items, _new_id())
    assert [n for _, _, n in out] == [4096, 4096, 1808]
    got = []
    for msg_id, data, n in out:
        assert len(data) <= fb.MAX_BATCH_BYTES
        batch = fb.decode_any(data, fb.batch_subject("lab", "web-1", msg_id))
        assert isinstance(batch, fb.Batch) and batch.id == msg_id and len(batch.decisions) == n
        assert batch.decisions[1].id == f"{msg_id}/1"  # an id per decision
        got += [(d.key, d.expires_at, d.reason) for d in batch.decisions]
    assert got == items
    assert len({d for _, d, _ in out}) == 3


def test_a_chunk_over_the_byte_bound_is_cut_until_it_fits() -> None:
    items = [(k, e, f"{i:04d}" + "r" * 196) for i, (k, e, _) in enumerate(_items(4096))]
    out = fb.chunks("web-1", NOW, items, _new_id())
    assert len(out) > 1 and sum(n for _, _, n in out) == 4096
    assert all(len(data) <= fb.MAX_BATCH_BYTES for _, data, _ in out)


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"v": 2}, "version-1"),
        ({"id": "web-2.0123456789abcdef"}, "does not name its origin"),
        ({"reasons": "port scan"}, "reasons must be a list"),
        ({"reasons": ["x\x1b[31m"]}, "printable"),
        ({"d": []}, "1-4096"),
        ({"d": [["203.0.113.7", NOW]]}, r"\[key, expires_at, reason index\]"),
        ({"d": [["203.0.113.7", NOW, 1]]}, "out of range"),
        ({"d": [["203.0.113.7", NOW, True]]}, "out of range"),
        ({"d": [["203.0.113.7", NOW, -1]]}, "out of range"),
        ({"d": [["10.0.0.1/8", NOW, 0]]}, "address or prefix"),
        ({"d": [["203.0.113.7; flush ruleset", NOW, 0]]}, "address or prefix"),
        ({"d": [["203.0.113.7", "soon", 0]]}, "UNIX time"),
        ({"d": [["203.0.113.7", NOW, 0]] * 4097}, "1-4096"),
        ({"d": {"203.0.113.7": 0}}, "1-4096"),
    ],
)
def test_malformed_batches_are_refused(override: dict[str, object], why: str) -> None:
    with pytest.raises(m.BadMessage, match=why):
        fb.decode_any(json.dumps(_body(**override)).encode(), SUBJECT)


def test_oversized_messages_are_refused_unread() -> None:
    huge = json.dumps(_body(d=[["203.0.113.7", NOW, 0]] * 20_000)).encode()
    assert len(huge) > fb.MAX_BATCH_BYTES
    with pytest.raises(m.BadMessage, match="exceeds"):
        fb.decode_any(huge, SUBJECT)
    # a single decision is still bounded by its own, smaller limit
    single = {"v": 1, "id": "web-1.0123456789abcdef", "op": "block", "key": "203.0.113.7"}
    single |= {"origin": "web-1", "at": NOW, "reason": "r" * 100, "pad": "x" * 5000}
    with pytest.raises(m.BadMessage, match="exceeds 4096"):
        fb.decode_any(json.dumps(single).encode(), "afw.lab.d.web-1.203_0_113_7")


def test_a_batch_on_the_wrong_subject_is_refused() -> None:
    data = json.dumps(_body()).encode()
    for subject, why in (
        ("afw.lab.d.web-2.b.0123456789abcdef", "published under"),  # another host's name
        ("afw.lab.d.web-1.203_0_113_7", "a batch on"),  # an address's subject
    ):
        with pytest.raises(m.BadMessage, match=why):
            fb.decode_any(data, subject)
    single = m.Decision("web-1.0123456789abcdef", m.BLOCK, "203.0.113.7", "web-1", NOW)
    with pytest.raises(m.BadMessage, match="a decision on"):
        fb.decode_any(m.encode(single), SUBJECT)


# --- through the services -----------------------------------------------------------------


def test_a_request_of_many_blocks_is_one_message_applied_in_one_block_batch(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        specs = [BlockSpec(f"203.0.{i >> 8}.{i & 255}", 600, "bulk") for i in range(5000)]
        specs.append(BlockSpec("10.77.9.5", 600, "bulk"))  # b's management zone
        made = await a.services.blocks.block(specs)
        assert Fleet.fleet(a).share_blocks(made, a.clock.now()) == 5001
        assert Fleet.fleet(a).status().backlog == 5001
        await f.pump()
        assert f.js.published == 2  # two chunks, not 5,001 messages
        assert len(blocked(b)) == 5000 and "10.77.9.5" not in blocked(b)
        blk = b.services.blocks.table.get("203.0.19.135", b.clock.now())
        own = a.services.blocks.table.get("203.0.19.135", a.clock.now())
        assert blk is not None and own is not None and blk.source == "fleet"
        assert blk.reason == "fleet a: bulk"  # the origin host, as for a single decision
        assert blk.expires_at is not None and own.expires_at is not None
        assert 0 <= blk.expires_at - own.expires_at < 1.0  # the same absolute expiry
        st = Fleet.fleet(b).status()
        assert st.applied == 5000 and st.skipped == {"protected": 1}
        assert st.last_message == "a batch of 905 blocks"
        assert Fleet.fleet(a).status().published == 5001
        lines = [e for e in b.audit_events() if e["event"] == "blocked"]
        assert len(lines) == 1 and lines[0]["count"] == 5000  # one store and kernel batch

    fleet_run(tmp_path, body)


def test_an_unblock_never_overtakes_the_batch_it_lifts_when_the_batch_publish_fails(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        publish, failures = f.js.publish, [1]

        def flaky(subject: str, data: bytes, msg_id: str) -> None:
            if fb.is_batch_subject(subject) and failures:
                failures.pop()
                raise m.BusError("the batch's acknowledgement is lost")
            publish(subject, data, msg_id)

        f.js.publish = flaky  # type: ignore[method-assign]
        keys = ["203.0.113.1", "203.0.113.2"]
        await a.services.blocks.block([BlockSpec(k, 600, "x") for k in keys], source="reputation")
        await a.services.blocks.unblock(ipaddress.ip_network(keys[0]))  # shared: newer
        assert Fleet.fleet(a).status().backlog == 3
        fa = Fleet.fleet(a)
        assert await fa.publish_some() == 0  # the batch alone, refused: nothing newer sent
        assert fa.status().backlog == 3 and f.js.published == 0
        await f.pump()
        assert blocked(b) == {keys[1]}
        c = await f.add("c")  # and a late joiner reads the stream in the same order
        await f.pump()
        assert blocked(c) == {keys[1]}

    fleet_run(tmp_path, body)


def test_a_redelivered_batch_is_applied_once(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        made = await a.services.blocks.block(
            [BlockSpec(f"203.0.113.{i}", 600, "x") for i in (1, 2)]
        )
        Fleet.fleet(a).share_blocks(made, a.clock.now())
        await f.pump()
        ((_, data, subject),) = f.js.decisions.values()
        fb_ = Fleet.fleet(b)
        await b.services.blocks.unblock(ipaddress.ip_network("203.0.113.1"))  # by hand, here only
        await fb_.apply([m.Delivery(data, 0, _noack, subject)])  # the same batch again
        assert fb_.status().skipped == {"duplicate": 2}
        assert blocked(b) == {"203.0.113.2"}  # the local unblock stands

    fleet_run(tmp_path, body)


def test_a_redelivery_at_or_below_the_applied_sequence_is_a_duplicate_without_its_id(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        b = await f.add("b")
        fleet = Fleet.fleet(b)
        fleet.inbound.seen = m.Seen(size=1)  # the ids are forgotten: the sequence decides

        def batch(n: int, seq: int, again: bool) -> m.Delivery:
            data = fb.encode(f"a.{n:016x}", "a", b.clock.now(), [(f"203.0.113.{n}", None, "x")])
            subject = f"afw.lab.d.a.b.{n:016x}"
            return m.Delivery(data, 0, _noack, subject, seq, again)

        await fleet.apply([batch(1, 10, False), batch(2, 11, False)])
        await fleet.apply([batch(1, 10, True)])  # redelivered: at or below 11
        assert fleet.status().skipped == {"duplicate": 1}
        await fleet.apply([batch(3, 12, True)])  # redelivered, but never applied
        await fleet.apply([batch(4, 1, False)])  # a stream made anew starts at 1 again
        assert blocked(b) == {f"203.0.113.{n}" for n in (1, 2, 3, 4)}
        assert fleet.status().applied == 4

    fleet_run(tmp_path, body)


def test_a_catch_up_applies_the_live_decisions_of_a_batch_and_skips_the_expired(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        f.js.up = False  # a partition: a blocks alone
        short = [BlockSpec(f"203.0.113.{i}", 5, "short") for i in range(1, 4)]
        long = [BlockSpec(f"203.0.113.{i}", 600, "long") for i in range(4, 8)]
        await a.services.blocks.block(short + long, source="reputation")
        f.advance(10)  # the short ones expire before the bus is back
        f.js.up = True
        await f.pump()
        assert blocked(b) == {f"203.0.113.{i}" for i in range(4, 8)}
        st = Fleet.fleet(b).status()
        assert st.applied == 4 and st.skipped == {"expired": 3}

    fleet_run(tmp_path, body)


def test_a_late_joiner_does_not_get_blocks_of_a_batch_that_were_lifted_later(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        keys = [f"203.0.113.{i}" for i in range(1, 6)]
        await a.services.blocks.block([BlockSpec(k, 600, "x") for k in keys], source="reputation")
        await f.pump()
        await a.services.blocks.unblock(ipaddress.ip_network(keys[0]))  # shared: a reputation block
        await f.pump()
        assert blocked(b) == set(keys[1:])
        c = await f.add("c")
        await f.pump()
        assert blocked(c) == set(keys[1:])

    fleet_run(tmp_path, body)


def test_a_batch_in_the_backlog_survives_a_restart_and_an_older_outbox_is_upgraded(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a = await f.add("a", POLICY_A)
        f.js.up = False
        specs = [BlockSpec(f"203.0.113.{i}", 600, "x") for i in (1, 2, 3)]
        await a.services.blocks.block(specs, source="reputation")
        await reputation_block_one(a, "203.0.113.4")
        assert Fleet.fleet(a).status().backlog == 4  # two rows: a batch of 3, a single
        a.services.ports.store.close()
        del f.hosts["a"]
        # the outbox as an older version left it: no `decisions` column (a row each)
        with sqlite3.connect(tmp_path / "a" / "state" / "state.sqlite3") as db:
            db.execute("ALTER TABLE fleet_outbox DROP COLUMN decisions")
        db.close()
        f.js.up = True
        again = await f.add("a", POLICY_A)
        assert Fleet.fleet(again).status().backlog == 2  # the batch now counts as one
        b = await f.add("b")
        await f.pump()
        assert blocked(b) == {f"203.0.113.{i}" for i in (1, 2, 3, 4)}
        assert Fleet.fleet(again).status().backlog == 0

    fleet_run(tmp_path, body)


async def reputation_block_one(d: FakeDaemon, key: str) -> None:
    await d.services.blocks.block([BlockSpec(key, 600, "scan")], source="reputation")


def test_garbage_on_the_bus_is_counted_and_never_crashes_the_consumer(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        b = await f.add("b")
        garbage = [
            (b"\xff" * 10, SUBJECT),
            (json.dumps(_body(d=[["x", 1, 0]])).encode(), SUBJECT),
            (json.dumps(_body()).encode(), "afw.lab.d.web-2.b.00"),
            (b"[" * 100_000, SUBJECT),
            (b"{" + b" " * (fb.MAX_BATCH_BYTES + 1) + b"}", SUBJECT),
        ]
        await Fleet.fleet(b).apply([m.Delivery(d, 0, _noack, s) for d, s in garbage])
        assert Fleet.fleet(b).status().invalid == len(garbage)
        assert blocked(b) == set()

    fleet_run(tmp_path, body)


async def _noack() -> None:
    return None
