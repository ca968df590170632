"""A hostile file at the policy path, through the daemon's services on fakes (issue 14,
items 4 and 10): a reload of a too-deep, FIFO or huge policy is rejected with a located
error, audited and shown in the status, the event loop keeps turning meanwhile, and the
watcher never reads such a file on the loop. Milliseconds, no privilege."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from aitherfwd.adapters.watch import PolicyWatcher, digest
from aitherfwd.errors import PolicyError
from aitherfwd.testing import FakeDaemon, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: deny}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
"""
DEEP = "version: 1\nrules:\n  - " + "[" * 100_000


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = fake_daemon(tmp_path, POLICY)
    yield d
    d.services.ports.store.close()


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]], *, start: bool = True) -> T:
    async def main() -> T:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            if start:
                await fake.services.generations.cold_start()
            return await body()
        finally:
            task.cancel()

    return asyncio.run(main())


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _replace_with_sparse(path: Path, size: int) -> None:
    path.unlink()
    with path.open("wb") as fh:
        fh.truncate(size)


@pytest.mark.parametrize("hostile", ["deep", "fifo", "sparse-768m"])
def test_reload_of_a_hostile_policy_file_is_rejected_audited_and_shown(
    fake: FakeDaemon, hostile: str
) -> None:
    s = fake.services
    expected = {"deep": "E-YAML", "fifo": "E-FILE", "sparse-768m": "E-FILE"}[hostile]

    async def reload() -> float:
        if hostile == "deep":
            fake.policy_path.write_text(DEEP)
        elif hostile == "fifo":
            _replace_with_fifo(fake.policy_path)
        else:
            _replace_with_sparse(fake.policy_path, 768 << 20)
        started = time.monotonic()
        outcome = await asyncio.wait_for(s.generations.reload(trigger="inotify"), 5)
        assert outcome.result == "rejected"
        assert [e["code"] for e in outcome.errors] == [expected]
        assert outcome.errors[0]["file"] == str(fake.policy_path)
        return time.monotonic() - started

    assert run(fake, reload) < 1
    assert s.generations.current().number == 1  # the running generation stays
    status = s.generations.status()
    assert status.last_reload is not None and status.last_reload.result == "rejected"
    assert "REJECTED" in s.generations.status_line()
    assert expected in s.generations.status_line()
    rejected = [e for e in fake.audit_events() if e["event"] == "reload_rejected"]
    assert [e["errors"][0]["code"] for e in rejected] == [expected]


@pytest.mark.parametrize("hostile", ["deep", "fifo"])
def test_cold_start_with_a_hostile_policy_file_is_a_policy_error_not_a_crash(
    tmp_path: Path, hostile: str
) -> None:
    fake = fake_daemon(tmp_path, DEEP)
    if hostile == "fifo":
        _replace_with_fifo(fake.policy_path)

    async def nothing() -> None:
        return None

    with pytest.raises(PolicyError, match="E-YAML" if hostile == "deep" else "E-FILE"):
        run(fake, nothing)
    assert fake.kernel.batches == []
    fake.services.ports.store.close()


def test_reload_reads_the_policy_off_the_event_loop(fake: FakeDaemon) -> None:
    s = fake.services
    slow_reads: list[float] = []
    real_load = s.generations._load_policy

    def slow_load(path: Path) -> object:
        time.sleep(0.3)  # a slow disk
        return real_load(path)

    async def reload_while_ticking() -> None:
        s.generations._load_policy = slow_load  # type: ignore[assignment]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                started = time.monotonic()
                await asyncio.sleep(0.01)
                slow_reads.append(time.monotonic() - started)
                ticks += 1

        task = asyncio.get_running_loop().create_task(ticker())
        await s.generations.reload()
        task.cancel()
        assert ticks >= 10

    run(fake, reload_while_ticking)
    assert max(slow_reads) < 0.2


def test_watcher_digest_of_a_fifo_or_huge_file_returns_at_once(tmp_path: Path) -> None:
    fifo, huge = tmp_path / "a.yaml", tmp_path / "b.yaml"
    os.mkfifo(fifo)
    with huge.open("wb") as fh:
        fh.truncate(768 << 20)
    started = time.monotonic()
    first = digest([fifo, huge])
    assert time.monotonic() - started < 1
    assert digest([fifo, huge]) == first  # stable: no reload at every poll


def test_watcher_keeps_the_event_loop_turning_with_a_fifo_at_the_policy_path(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    changes: list[str] = []

    async def on_change() -> None:
        changes.append("changed")

    async def main() -> float:
        watcher = PolicyWatcher(lambda: [policy], on_change, lambda: 0.05)
        watcher.start()
        try:
            _replace_with_fifo(policy)
            worst = 0.0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not changes:
                started = time.monotonic()
                await asyncio.sleep(0.01)
                worst = max(worst, time.monotonic() - started)
            return worst
        finally:
            watcher.close()

    worst = asyncio.run(main())
    assert changes == ["changed"]
    assert worst < 0.5


def test_a_store_without_persistence_is_said_in_status_and_status_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")  # the state directory cannot be created
    fake = fake_daemon(tmp_path, POLICY)
    s = fake.services

    async def nothing() -> None:
        return None

    run(fake, nothing)
    assert "STATE NOT PERSISTED (unwritable)" in s.generations.status_line()
    assert not s.ports.store.persistent
