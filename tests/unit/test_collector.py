"""The cyclic collector after the cold start: what start-up made is frozen out of full
collections, and a collection that still stalls the event loop is logged and counted."""

from __future__ import annotations

import gc
import logging

import pytest

from aitherfwd.adapters import memory


def test_a_slow_collection_is_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([10.0, 10.5, 20.0, 20.01])
    monkeypatch.setattr(memory.time, "perf_counter", lambda: next(clock))
    before = memory.slow_collections
    with caplog.at_level(logging.WARNING, logger="aitherfwd.adapters.memory"):
        memory._on_collection("start", {"generation": 2})
        memory._on_collection("stop", {"generation": 2, "collected": 7})
        memory._on_collection("start", {"generation": 0})
        memory._on_collection("stop", {"generation": 0, "collected": 0})  # 10 ms: quiet
    assert memory.slow_collections == before + 1
    (record,) = caplog.records
    assert "generation=2 seconds=0.500 collected=7" in record.getMessage()


def test_settling_freezes_what_start_up_made_and_watches_collections() -> None:
    try:
        memory.settle_after_start()
        assert gc.get_freeze_count() > 0
        assert memory._on_collection in gc.callbacks
        memory.settle_after_start()  # idempotent: one callback
        assert gc.callbacks.count(memory._on_collection) == 1
    finally:
        gc.unfreeze()
        if memory._on_collection in gc.callbacks:
            gc.callbacks.remove(memory._on_collection)
