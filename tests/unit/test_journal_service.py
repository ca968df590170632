"""Threats read from the journal, through the daemon's real services on fakes (the fake
journal has the real one's match rules, cursors, descriptor and invalidation): lines become
blocks on the reputation ladder, the cursor in the state store makes a restart neither
replay nor skip, rotation and vacuum and journal errors are survived. Milliseconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aitherfwd.daemon.journal import CURSOR
from aitherfwd.testing import FakeDaemon, FakeJournal, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
reputation: {threshold: 5, temp_block: 15m}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
journal:
  - {name: ssh, builtin: openssh}
"""
SSHD = {"SYSLOG_IDENTIFIER": "sshd", "_UID": "0"}
FAILED = "Failed password for root from {} port {} ssh2"


def failed(journal: FakeJournal, address: str, n: int, start: int = 1000) -> None:
    for i in range(n):
        journal.append(FAILED.format(address, start + i), **SSHD)


async def until(predicate: Callable[[], object], what: str, deadline: float = 3.0) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        await asyncio.sleep(0.005)


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]]) -> T:
    """Cold start, then `body` while the kernel writer and the journal reader run."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        writer = loop.create_task(fake.services.writer.run())
        reader = None
        try:
            await fake.services.generations.cold_start()
            assert fake.services.journal is not None
            fake.services.journal.retry = 0.01
            js = fake.services.journal
            reader = loop.create_task(js.run())
            if js.sources and not fake.journal.fail_open:
                await until(lambda: js.counters.listening, "the journal open")
            return await body()
        finally:
            for task in (reader, writer):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(main())


def blocked(fake: FakeDaemon, key: str) -> bool:
    return fake.services.blocks.table.get(key, fake.clock.now()) is not None


def events_of(fake: FakeDaemon, key: str) -> int:
    off = fake.services.reputation.offenders.get(key)
    return off.events if off is not None else 0


def test_five_failed_ssh_logins_in_the_journal_block_the_address(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)

    async def body() -> None:
        failed(fake.journal, "192.0.2.7", 4)
        await until(lambda: events_of(fake, "192.0.2.7") == 4, "four events scored")
        assert not blocked(fake, "192.0.2.7")
        failed(fake.journal, "192.0.2.7", 1, start=2000)
        await until(lambda: blocked(fake, "192.0.2.7"), "the fifth line blocks")

    run(fake, body)
    blk = fake.services.blocks.table.get("192.0.2.7", fake.clock.now())
    assert blk is not None and blk.source == "reputation" and blk.expires_at is not None
    assert "SSH_AUTH_FAILURE" in blk.reason
    assert "192.0.2.7" in {e["elem"]["val"] for e in fake.kernel.set_elements("block_v4")}
    assert fake.services.journal is not None
    status = fake.services.journal.status()
    assert (status.threats, status.by_source) == (5, {"ssh": 5})
    escalations = [e for e in fake.audit_events() if e["event"] == "escalation_temporary"]
    assert escalations[0]["source_ip"] == "192.0.2.7"
    fake.services.ports.store.close()


def test_lines_of_other_programs_and_forged_sshd_lines_are_not_read(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)

    async def body() -> None:
        for i in range(10):
            fake.journal.append(
                FAILED.format("192.0.2.8", i), SYSLOG_IDENTIFIER="sshd", _UID="1000"
            )
            fake.journal.append(FAILED.format("192.0.2.8", i), SYSLOG_IDENTIFIER="cron", _UID="0")
        failed(fake.journal, "192.0.2.9", 1)
        await until(lambda: events_of(fake, "192.0.2.9") == 1, "the real sshd line")

    run(fake, body)
    assert events_of(fake, "192.0.2.8") == 0
    fake.services.ports.store.close()


def test_a_restart_neither_replays_nor_skips_lines(tmp_path: Path) -> None:
    journal = FakeJournal()
    first = fake_daemon(tmp_path, POLICY, journal=journal)

    async def three() -> None:
        failed(journal, "192.0.2.10", 3)
        await until(lambda: events_of(first, "192.0.2.10") == 3, "three events")

    run(first, three)
    first.services.ports.store.close()
    failed(journal, "192.0.2.10", 1, start=3000)  # written while the daemon is down

    second = fake_daemon(tmp_path, POLICY, journal=journal)

    async def after() -> None:
        await until(lambda: events_of(second, "192.0.2.10") == 4, "the line written while down")
        failed(journal, "192.0.2.10", 1, start=4000)
        await until(lambda: blocked(second, "192.0.2.10"), "the fifth event blocks")

    run(second, after)
    assert events_of(second, "192.0.2.10") == 5  # none twice, none skipped
    assert journal.opened[-1][1] is not None  # opened after the stored cursor
    assert second.services.ports.store.load_cursor(CURSOR) == f"s={journal.seq}"
    second.services.ports.store.close()


def test_the_first_start_reads_from_the_end_of_the_journal(tmp_path: Path) -> None:
    journal = FakeJournal()
    failed(journal, "192.0.2.11", 10)  # history before aitherfwd was installed
    fake = fake_daemon(tmp_path, POLICY, journal=journal)

    async def body() -> None:
        failed(journal, "192.0.2.12", 1)
        await until(lambda: events_of(fake, "192.0.2.12") == 1, "a new line")

    run(fake, body)
    assert events_of(fake, "192.0.2.11") == 0
    fake.services.ports.store.close()


def test_rotation_and_vacuum_reopen_the_journal_after_the_cursor(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, POLICY)

    async def body() -> None:
        failed(fake.journal, "192.0.2.13", 2)
        await until(lambda: events_of(fake, "192.0.2.13") == 2, "two events")
        opens = len(fake.journal.opened)
        fake.journal.vacuum(keep=1)
        await until(lambda: len(fake.journal.opened) > opens, "reopened")
        failed(fake.journal, "192.0.2.13", 2, start=5000)
        await until(lambda: events_of(fake, "192.0.2.13") == 4, "lines after the rotation")

    run(fake, body)
    assert events_of(fake, "192.0.2.13") == 4
    fake.services.ports.store.close()


def test_a_journal_that_cannot_be_opened_is_retried_and_the_daemon_goes_on(
    tmp_path: Path,
) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    fake.journal.fail_open = 2

    async def body() -> None:
        assert fake.services.journal is not None
        await until(
            lambda: fake.services.journal and fake.services.journal.counters.listening, "open"
        )
        failed(fake.journal, "192.0.2.14", 1)
        await until(lambda: events_of(fake, "192.0.2.14") == 1, "read after the retries")

    run(fake, body)
    assert fake.services.journal is not None and fake.services.journal.counters.errors == 2
    fake.services.ports.store.close()


def test_without_journal_sources_the_journal_is_never_opened_until_a_reload_adds_one(
    tmp_path: Path,
) -> None:
    without = POLICY.split("journal:", maxsplit=1)[0]
    fake = fake_daemon(tmp_path, without)

    async def body() -> None:
        await asyncio.sleep(0.05)
        assert fake.journal.opened == []
        fake.policy_path.write_text(POLICY)
        result = await fake.services.generations.reload(trigger="test")
        assert result.result == "applied"
        await until(lambda: fake.journal.opened, "opened after the reload")
        failed(fake.journal, "192.0.2.15", 1)
        await until(lambda: events_of(fake, "192.0.2.15") == 1, "read")

    run(fake, body)
    fake.services.ports.store.close()


def test_a_flood_of_lines_is_read_in_bounded_batches_while_the_loop_keeps_turning(
    tmp_path: Path,
) -> None:
    fake = fake_daemon(tmp_path, POLICY)
    lines = 3000

    async def body() -> None:
        assert fake.services.journal is not None
        js = fake.services.journal
        for i in range(lines):
            fake.journal.append(FAILED.format(f"198.51.{i // 250}.{i % 250 + 1}", i), **SSHD)
        turns = 0
        while js.counters.entries < lines:
            await asyncio.sleep(0)  # the event loop keeps turning meanwhile
            turns += 1
            assert turns < 1_000_000
        assert turns > lines // 256  # never one long stretch without a turn

    run(fake, body)
    assert fake.services.journal is not None
    assert fake.services.journal.counters.threats == lines
    assert len(fake.services.reputation.offenders) == lines
    fake.services.ports.store.close()


def test_a_stop_while_the_batchs_block_is_being_written_keeps_its_cursor(
    tmp_path: Path,
) -> None:
    """The kernel writer is stalled: the fifth line is scored and its block waits on the
    writer when the daemon stops. The cursor is saved anyway, so the next start does not
    score the five lines again."""
    journal = FakeJournal()
    first = fake_daemon(tmp_path, POLICY, journal=journal)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        writer = loop.create_task(first.services.writer.run())
        await first.services.generations.cold_start()
        writer.cancel()  # from here on a block waits for the writer forever
        await asyncio.gather(writer, return_exceptions=True)
        js = first.services.journal
        assert js is not None
        reader = loop.create_task(js.run())
        await until(lambda: js.counters.listening, "the journal open")
        failed(journal, "192.0.2.30", 5)
        await until(lambda: events_of(first, "192.0.2.30") == 5, "five events scored")
        await asyncio.sleep(0.02)
        assert not reader.done()  # waiting on the stalled writer
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(main())
    assert first.services.ports.store.load_cursor(CURSOR) == f"s={journal.seq}"
    first.services.ports.store.close()

    second = fake_daemon(tmp_path, POLICY, journal=journal)

    async def after() -> None:
        failed(journal, "192.0.2.31", 1)
        await until(lambda: events_of(second, "192.0.2.31") == 1, "a new line")

    run(second, after)
    assert events_of(second, "192.0.2.30") == 5  # not scored again
    second.services.ports.store.close()
