"""The one serialized kernel writer (layer L3).

Owns: the only path by which the daemon talks to libnftables. Jobs run one at a time in a
dedicated thread, so the event loop stays responsive during a large transaction. Element
changes that queue up while a transaction runs are coalesced into the next one — a single
ban goes out at once, a storm of bans goes out in a few large batches. If a coalesced
batch is refused, its jobs are retried one by one so one bad request cannot fail others.
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

from aitherfwd.adapters import nftgen
from aitherfwd.adapters.nft import Nft
from aitherfwd.errors import ApplyError

log = logging.getLogger(__name__)
T = TypeVar("T")
Json = dict[str, Any]


@dataclass
class WriterStats:
    transactions_ok: int = 0
    transactions_failed: int = 0
    elements: int = 0
    last_seconds: float = 0.0


@dataclass
class _Job:
    future: asyncio.Future[Any]
    commands: list[Json] | None = None  # element changes (coalescable)
    call: Callable[[Nft], Any] | None = None  # anything else, run alone
    writes: bool = True


@dataclass
class KernelWriter:
    nft: Nft
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

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="kernel-writer")

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

    async def call(self, fn: Callable[[Nft], T], *, writes: bool = True) -> T:
        """Run `fn(nft)` alone, in order with everything else (applies, listings)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(_Job(future, call=fn, writes=writes))
        result: T = await future
        return result

    def _submit(self, job: _Job) -> None:
        self._jobs.append(job)
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._jobs.popleft()
            if job.call is not None:
                await self._run_call(loop, job)
                continue
            batch = [job]  # element jobs queued meanwhile go out in the same transaction
            while self._jobs and self._jobs[0].commands is not None:
                batch.append(self._jobs.popleft())
            await self._run_batch(loop, batch)

    async def _run_call(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        call = job.call
        if call is None:
            return
        try:
            result = await loop.run_in_executor(self._pool, self._called, call, job.writes)
        except Exception as exc:
            _settle(job.future, exc=exc)
        else:
            _settle(job.future, result=result)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        commands = [c for j in batch for c in (j.commands or [])]
        try:
            await loop.run_in_executor(self._pool, self._timed_run, commands)
        except ApplyError as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning("coalesced batch refused, retrying one by one jobs=%d", len(batch))
            for job in batch:
                await self._run_batch(loop, [job])
            return
        for job in batch:
            _settle(job.future, result=None)

    def _called(self, call: Callable[[Nft], Any], writes: bool) -> Any:
        try:
            return call(self.nft)
        finally:
            if writes:
                self._note_generation()

    def _note_generation(self) -> None:
        try:
            self.own_generation = nftgen.current()
        except OSError:
            self.own_generation = None

    def _timed_run(self, commands: list[Json]) -> None:
        started = time.perf_counter()
        try:
            self.nft.run(commands)
        except ApplyError:
            self.stats.transactions_failed += 1
            raise
        self._note_generation()
        self.stats.transactions_ok += 1
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
