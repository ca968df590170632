"""The one serialized kernel writer (layer L3).

Owns: the only path by which the daemon talks to libnftables. Jobs run one at a time in a
dedicated thread, so the event loop stays responsive during a large transaction; a small
batch of element changes that the kernel port can send by netlink at once (`run_quick`,
tens of microseconds) is written from the loop instead, saving two thread hand-offs. Element
changes that queue up while a transaction runs are coalesced into the next one — a single
ban goes out at once, a storm of bans goes out in a few large batches. If a coalesced
batch is refused, its jobs are retried one by one so one bad request cannot fail others.

Supervised: a refusal (`AitherError`, e.g. ApplyError) reaches that job's caller and the
loop goes on; anything else is a bug or a broken kernel interface: every waiting caller
gets the exception and `run()` raises it, which ends the daemon's task group and so the
process (systemd restarts it, and the cold start reconciles the kernel from the store).
Nothing waits forever on a dead writer. `healthy()` tells the watchdog whether the writer
is alive and making progress (a job running longer than `STALL_SECONDS` is a stall).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aitherfwd.daemon.ports import Kernel
from aitherfwd.errors import AitherError, ApplyError

log = logging.getLogger(__name__)
T = TypeVar("T")
Json = dict[str, Any]
# A job running longer than this means the kernel (or libnftables) is stuck: a 1,000,000
# element restore takes ~8 s on a 2-core machine, so this leaves a wide margin.
STALL_SECONDS = 120.0


@dataclass
class WriterStats:
    jobs_ok: int = 0
    jobs_failed: int = 0
    elements: int = 0
    last_seconds: float = 0.0


@dataclass
class _Job:
    future: asyncio.Future[Any]
    commands: list[Json] | None = None  # element changes (coalescable)
    call: Callable[[Kernel], Any] | None = None  # anything else, run alone
    writes: bool = True


@dataclass
class KernelWriter:
    nft: Kernel
    stats: WriterStats = field(default_factory=WriterStats)
    _jobs: deque[_Job] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
    )
    _task: asyncio.Task[None] | None = None
    # the namespace's nftables generation right after our last write: if it has not moved
    # since, nobody else changed anything (see adapters/nftgen.py)
    own_generation: int | None = None
    failed: BaseException | None = None  # what ended the loop
    _busy_since: float | None = None  # monotonic start of the job running now
    monotonic: Callable[[], float] = time.monotonic

    def start(self) -> None:
        """Run the loop as a task of its own (tools and tests); the daemon runs `run()`
        inside its task group instead."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="kernel-writer")

    def healthy(self) -> bool:
        """Alive and making progress: the loop runs, and no job has run for too long."""
        if self.failed is not None or (self._task is not None and self._task.done()):
            return False
        busy = self._busy_since
        return busy is None or self.monotonic() - busy < STALL_SECONDS

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def elements(self, commands: list[Json]) -> None:
        """Apply element commands; returns once the kernel accepted them (or raises)."""
        if not commands:
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Job(future, commands=commands))
        await future

    async def call(self, fn: Callable[[Kernel], T], *, writes: bool = True) -> T:
        """Run `fn(nft)` alone, in order with everything else (applies, listings)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Job(future, call=fn, writes=writes))
        result: T = await future
        return result

    def _submit(self, job: _Job) -> None:
        if self.failed is not None:
            _settle(job.future, exc=self.failed)
            return
        self._jobs.append(job)
        self._wake.set()

    async def run(self) -> None:
        """The loop: one job (or one coalesced batch) at a time, forever."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._jobs.popleft()
            if job.call is not None:
                await self._run_call(loop, job)
            else:
                batch = [job]  # element jobs queued meanwhile go out in the same transaction
                while self._jobs and self._jobs[0].commands is not None:
                    batch.append(self._jobs.popleft())
                await self._run_batch(loop, batch)
                del batch
            # not held while the loop waits: the last job's commands (35 MB of JSON for
            # 100,000 elements) would stay alive until the next job
            del job

    async def _run_call(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        call = job.call
        if call is None:
            return
        self._busy_since = self.monotonic()
        try:
            result = await loop.run_in_executor(self._pool, self._called, call, job.writes)
        except AitherError as exc:  # the caller's problem, not the loop's
            _settle(job.future, exc=exc)
        except Exception as exc:
            self._fail(exc, [job])
            raise
        else:
            _settle(job.future, result=result)
        finally:
            self._busy_since = None

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        commands = [c for j in batch for c in (j.commands or [])]
        self._busy_since = self.monotonic()
        try:
            # a small element batch is written right here (the kernel port says whether it
            # can: netlink, no libnftables); the thread is idle meanwhile, so writes stay
            # one at a time and in order
            if not self._quick_run(commands):
                await loop.run_in_executor(self._pool, self._timed_run, commands)
        except ApplyError as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning("coalesced batch refused, retrying one by one jobs=%d", len(batch))
            for job in batch:
                await self._run_batch(loop, [job])
            return
        except Exception as exc:
            self._fail(exc, batch)
            raise
        finally:
            self._busy_since = None
        for job in batch:
            _settle(job.future, result=None)

    def _fail(self, exc: Exception, running: list[_Job]) -> None:
        """The writer cannot go on: tell everyone waiting, then let the exception end it."""
        log.critical("kernel writer failed; the daemon exits error=%r", exc)
        for job in [*running, *self._jobs]:
            _settle(job.future, exc=exc)
        self._jobs.clear()
        self.failed = exc

    def _called(self, call: Callable[[Kernel], Any], writes: bool) -> Any:
        try:
            return call(self.nft)
        finally:
            if writes:
                self._note_generation()

    def _note_generation(self) -> None:
        self.own_generation = self.nft.generation()

    def _quick_run(self, commands: list[Json]) -> bool:
        started = time.perf_counter()
        try:
            if not self.nft.run_quick(commands):
                return False
        except ApplyError:
            self.stats.jobs_failed += 1
            raise
        self._done(commands, started)
        return True

    def _timed_run(self, commands: list[Json]) -> None:
        started = time.perf_counter()
        try:
            self.nft.run(commands)
        except ApplyError:
            self.stats.jobs_failed += 1
            raise
        self._done(commands, started)

    def _done(self, commands: list[Json], started: float) -> None:
        self._note_generation()
        self.stats.jobs_ok += 1
        self.stats.elements += len(commands)
        self.stats.last_seconds = time.perf_counter() - started


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
