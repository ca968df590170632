"""The state store's promises (nothing lost; an untrustworthy file moved aside; failed
writes reported, never raised) and the audit log's (one line per record whatever the
fields hold; rotation; reopen). Files only, in a temporary directory; milliseconds."""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from pathlib import Path

import pytest

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.store import AUTOCHECKPOINT, SHRINK_ROWS, Store
from aitherfwd.adapters.store_rows import BULK_KEYS, arrays
from aitherfwd.adapters.store_schema import SCHEMA_VERSION
from aitherfwd.audit_records import Blocked, DaemonStarted, DaemonStopped
from aitherfwd.dynamic.blocks import Block

NOW = 1_800_000_000.0


def _block(addr: str, ttl: float | None = 60, reason: str = "r") -> Block:
    return Block.of(ipaddress.ip_network(addr), NOW + ttl if ttl else None, reason, "manual", NOW)


def test_blocks_round_trip_and_expired_ones_are_not_restored(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_blocks([_block("203.0.113.7"), _block("2001:db8::/64", None), _block("10.0.0.1", 5)])
    store.close()
    loaded = {b.key: b for b in Store(tmp_path).load_blocks(NOW + 10)}
    assert set(loaded) == {"203.0.113.7", "2001:db8::/64"}
    assert loaded["2001:db8::/64"].expires_at is None


def test_history_records_each_block_and_how_it_ended(tmp_path: Path) -> None:
    store = Store(tmp_path)
    events = {"203.0.113.7": [{"type": "SENTRY_PORT_SCAN", "severity": "high"}]}
    store.save_blocks([_block("203.0.113.7", 60, "first")], events=events)
    store.end_blocks(["203.0.113.7"], NOW + 60, "expired")
    store.save_blocks([_block("203.0.113.7", 60, "second")._replace(created_at=NOW + 100)])
    # blocked again while live: the same block, extended in place (its start kept)
    store.save_blocks([_block("203.0.113.7", None, "third")._replace(created_at=NOW + 200)])
    history = store.history(["203.0.113.7"])
    assert [(h.reason, h.started_at, h.end_reason) for h in history] == [
        ("third", NOW + 100, None),
        ("first", NOW, "expired"),
    ]
    assert history[0].expires_at is None and history[0].ended_at is None
    assert history[1].events == events["203.0.113.7"] and history[1].ended_at == NOW + 60
    store.end_blocks(["203.0.113.7"], NOW + 300, "unblocked")
    ended = store.history(["203.0.113.7"])
    assert [(h.reason, h.ended_at, h.end_reason) for h in ended] == [
        ("third", NOW + 300, "unblocked"),
        ("first", NOW + 60, "expired"),
    ]
    assert store.load_blocks(NOW + 300) == []


def test_a_v3_database_is_brought_to_v4_with_its_open_history_rows(tmp_path: Path) -> None:
    """Up to v3 a live block also had an open history row: it becomes the block's row
    (with its events); an open row of a block the store no longer held is closed."""
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.executescript(V3_SCHEMA)
    db.executescript(
        """
        INSERT INTO blocks VALUES ('10.0.0.1', 2000000000.5, 'r', 'manual', 1000.0);
        INSERT INTO blocks VALUES ('10.0.0.2', NULL, 'p', 'reputation', 1100.0);
        INSERT INTO block_history (key, reason, source, started_at, expires_at, ended_at,
            end_reason, events) VALUES
            ('10.0.0.1', 'old', 'manual', 500.0, 600.0, 600.0, 'expired', '[]'),
            ('10.0.0.1', 'r', 'manual', 1000.0, 2000000000.5, NULL, NULL, '[]'),
            ('10.0.0.2', 'p', 'reputation', 1100.0, NULL, NULL, NULL, '[{"type": "X"}]'),
            ('10.0.0.3', 'gone', 'manual', 1200.0, 1300.0, NULL, NULL, '[]');
        PRAGMA user_version = 3;
        """
    )
    db.close()
    store = Store(tmp_path)
    assert store.recovered is None
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert [b.key for b in store.load_blocks(1500.0)] == ["10.0.0.1", "10.0.0.2"]
    one = store.history(["10.0.0.1"])
    assert [(h.reason, h.ended_at) for h in one] == [("r", None), ("old", 600.0)]
    (two,) = store.history(["10.0.0.2"])
    assert two.events == [{"type": "X"}] and two.ended_at is None
    (three,) = store.history(["10.0.0.3"])
    assert (three.ended_at, three.end_reason) == (1300.0, "unknown")
    assert store._db.execute(
        "SELECT count(*) FROM block_history WHERE ended_at IS NULL"
    ).fetchone() == (0,)
    store.close()


V3_SCHEMA = """
CREATE TABLE blocks (key TEXT PRIMARY KEY, expires_at REAL, reason TEXT NOT NULL,
    source TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE offenders (key TEXT PRIMARY KEY, score REAL NOT NULL, updated REAL NOT NULL,
    blocks TEXT NOT NULL, blocked_until REAL, permanent INTEGER NOT NULL,
    events INTEGER NOT NULL);
CREATE TABLE block_history (id INTEGER PRIMARY KEY, key TEXT NOT NULL, reason TEXT NOT NULL,
    source TEXT NOT NULL, started_at REAL NOT NULL, expires_at REAL, ended_at REAL,
    end_reason TEXT, events TEXT NOT NULL);
CREATE INDEX block_history_key ON block_history (key, started_at);
"""


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "future-schema", "empty-file", "wrong-tables"],
)
def test_an_untrustworthy_database_is_moved_aside_and_a_new_one_works(
    tmp_path: Path, damage: str
) -> None:
    store = Store(tmp_path)
    store.save_blocks([_block(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(2000)])
    store.close()
    db = tmp_path / "state.sqlite3"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    elif damage == "future-schema":
        con = sqlite3.connect(db)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        con.close()
    elif damage == "empty-file":
        db.write_bytes(b"")
    else:
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE blocks (other TEXT)")
        con.close()
    recovered = Store(tmp_path)
    if damage == "empty-file":  # SQLite treats an empty file as a new database: nothing to move
        assert recovered.recovered is None
    else:
        assert recovered.recovered is not None
        assert list(tmp_path.glob("state.sqlite3.bad-*"))
    assert recovered.load_blocks(NOW) == []
    assert recovered.save_blocks([_block("203.0.113.9")])
    assert [b.key for b in recovered.load_blocks(NOW)] == ["203.0.113.9"]


def test_a_failing_write_is_counted_not_raised(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store._db.execute("PRAGMA query_only = 1")  # every write now fails, as on a full disk
    assert store.save_blocks([_block("203.0.113.7")]) is False
    # queued behind the failed one, in order, without trying again (the housekeeping does)
    assert store.end_blocks(["203.0.113.7"], NOW, "unblocked") is False
    assert store.write_errors == 1 and len(store.pending) == 2
    store._db.execute("PRAGMA query_only = 0")
    assert store.flush_pending() and not store.pending
    assert store.save_blocks([_block("203.0.113.7")]) is True


def test_a_bulk_write_keeps_every_row_group_and_event(tmp_path: Path) -> None:
    store = Store(tmp_path)
    keys = [f"10.1.{i // 256}.{i % 256}" for i in range(BULK_KEYS + 10)]  # two JSON arrays
    blocks = [_block(k, 60, "a") for k in keys] + [_block("2001:db8::/64", None, "b")]
    blocks += [_block("10.9.0.1", 30, "c"), _block("10.9.0.2", 60, "a")]
    events = {"10.9.0.1": [{"type": "SENTRY_PORT_SCAN"}]}
    assert store.save_blocks(blocks, events=events)
    store.save_blocks([_block(keys[0], 600, "again")])
    loaded = {b.key: b for b in store.load_blocks(NOW)}
    assert len(loaded) == len(blocks)
    assert loaded["2001:db8::/64"].expires_at is None and loaded["10.9.0.2"].reason == "a"
    assert loaded[keys[0]] == _block(keys[0], 600, "again")
    assert loaded[keys[-1]] == _block(keys[-1], 60, "a")
    assert store.history(["10.9.0.1"])[0].events == events["10.9.0.1"]
    (again,) = store.history([keys[0]])  # extended in place: one block
    assert again.reason == "again" and again.ended_at is None
    assert store._db.execute("SELECT count(*) FROM block_history").fetchone() == (0,)
    store.end_blocks(keys, NOW + 1, "unblocked")  # two JSON arrays moved
    assert len(store.load_blocks(NOW + 1)) == 3
    ended = store._db.execute("SELECT count(*), min(end_reason) FROM block_history").fetchone()
    assert ended == (len(keys), "unblocked")
    assert store.history(["10.9.0.1"])[0].events == events["10.9.0.1"]


def test_a_large_write_gives_back_the_page_cache_and_a_small_one_keeps_it(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    said: list[str] = []
    store._db.set_trace_callback(said.append)
    store.save_blocks([_block(f"10.4.0.{i}") for i in range(200)])
    assert "PRAGMA shrink_memory" not in said
    many = [_block(f"10.5.{i // 256}.{i % 256}") for i in range(SHRINK_ROWS)]
    assert store.save_blocks(many)
    assert said[-1] == "PRAGMA shrink_memory" and said[-2] == "COMMIT"
    assert len(store.load_blocks(NOW)) == 200 + SHRINK_ROWS


def test_a_large_write_leaves_its_checkpoint_to_later_and_no_small_write_pays_it(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    said: list[str] = []
    store._db.set_trace_callback(said.append)
    many = [_block(f"10.6.{i // 256}.{i % 256}") for i in range(SHRINK_ROWS)]
    assert store.save_blocks(many) and store.checkpoint_due
    assert "PRAGMA wal_autocheckpoint = 0" in said and not any("wal_checkpoint(" in s for s in said)
    store.save_blocks([_block("10.7.0.1")])  # a small write meanwhile copies nothing either
    assert store.checkpoint_due and not any("wal_checkpoint(" in s for s in said)
    store.checkpoint()
    assert not store.checkpoint_due and said[-2:] == [
        "PRAGMA wal_checkpoint(PASSIVE)",
        f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}",
    ]
    store.checkpoint()  # nothing due: nothing done
    assert said[-1] == f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT}"
    copied = sqlite3.connect(tmp_path / "state.sqlite3").execute("PRAGMA wal_checkpoint")
    busy, logged, done = copied.fetchone()
    assert busy == 0 and logged == done  # every frame is in the database
    assert len(store.load_blocks(NOW)) == SHRINK_ROWS + 1
    store.close()
    reopened = Store(tmp_path)
    assert len(reopened.load_blocks(NOW)) == SHRINK_ROWS + 1
    reopened.close()


def test_bulk_statements_meet_their_keys_in_sorted_order() -> None:
    keys = [f"10.8.{i % 7}.{i % 251}" for i in range(3 * BULK_KEYS)]
    parts = [json.loads(a) for a in arrays(keys)]
    assert [k for a in parts for k in a] == sorted(keys) and max(map(len, parts)) == BULK_KEYS


def test_a_failed_bulk_write_counts_every_row_against_the_pending_cap(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store._db.execute("PRAGMA query_only = 1")
    assert store.save_blocks([_block(f"10.2.0.{i}") for i in range(200)]) is False
    assert store.pending_rows >= 200  # a JSON array of keys counts as BULK_KEYS rows
    store._db.execute("PRAGMA query_only = 0")
    assert store.flush_pending() and not store.pending and store.pending_rows == 0
    assert len(store.load_blocks(NOW)) == 200


INJECTIONS = [
    "1.2.3.4 }; flush ruleset",
    '"; nft flush ruleset',
    "line\nbreak",
    "carriage\rreturn",
    "sep\u2028arator\u2029para",
    "nul\x00byte\x1b[31m",
    "emoji 🔥 and é",
]


def _blocked(
    address: str, *, count: int = 1, reason: str = "test", actor: dict[str, int] | None = None
) -> Blocked:
    return Blocked(
        source_ip=address,
        count=count,
        source="manual",
        addresses=(address,),
        ttl=None,
        reason=reason,
        actor=actor,
    )


def test_every_field_stays_on_one_line_whatever_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for text in INJECTIONS:
        log.write(NOW, _blocked(text, reason=text, actor={"uid": 0, "gid": 0, "pid": 1}))
    log.close()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == len(INJECTIONS)
    assert b"\xe2\x80\xa8" not in raw  # U+2028 never appears raw
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["reason"] for r in records] == INJECTIONS
    assert all(r["action"] == "block" and r["timestamp"].endswith("Z") for r in records)


def test_rotation_keeps_n_files_and_no_line_is_split(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=2000, keep=3)
    for i in range(200):
        log.write(NOW, _blocked(f"10.0.0.{i % 250}", count=i))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    numbers = []
    for name in reversed(files[1:]):
        numbers += [json.loads(x)["count"] for x in (tmp_path / name).read_text().splitlines()]
    numbers += [json.loads(x)["count"] for x in path.read_text().splitlines()]
    assert numbers == sorted(numbers) and numbers[-1] == 199  # newest kept, in order
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.write(NOW, DaemonStarted(generation=1, policy_sha256="0" * 64, adopted=False, blocks=0))
    path.rename(tmp_path / "audit.jsonl.old")  # what logrotate does
    log.reopen()
    log.write(NOW, DaemonStopped(generation=1))
    log.close()
    assert json.loads(path.read_text())["event"] == "daemon_stopped"
    assert json.loads((tmp_path / "audit.jsonl.old").read_text())["event"] == "daemon_started"


def test_an_audit_write_error_is_counted(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    log = AuditLog(tmp_path / "dir")  # a directory cannot be opened for writing
    log.write(NOW, _blocked("10.0.0.1"))
    assert log.errors == 1


def test_bulk_key_arrays_are_json_whatever_the_keys_hold() -> None:
    for keys in (["203.0.113.7", "2001:db8::/64"], ['a"b', "c"], ["x\\y", "é"], ["\x00"]):
        assert [k for text in arrays(keys) for k in json.loads(text)] == sorted(keys)
    many = [f"10.3.{i // 256}.{i % 256}" for i in range(BULK_KEYS + 1)]
    assert [len(json.loads(t)) for t in arrays(many)] == [BULK_KEYS, 1]
