"""The one kernel writer against the fake kernel: coalescing, one-by-one retry of a refused
batch, and supervision — an unexpected failure ends the writer (and fails every waiter)
instead of leaving callers waiting forever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aitherfwd.daemon.writer import STALL_SECONDS, KernelWriter
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b
from aitherfwd.testing import FakeClock, FakeKernel

SET = b.set_("block_v4", "ipv4_addr", ["timeout"])


def kernel_with_set() -> FakeKernel:
    k = FakeKernel()
    k.run([b.add(b.table()), b.add(SET)])
    k.batches.clear()
    return k


def add(address: str) -> list[dict[str, Any]]:
    return [b.add(b.element("block_v4", [address]))]


def test_element_changes_queued_together_go_out_in_one_transaction() -> None:
    kernel = kernel_with_set()

    async def main() -> None:
        writer = KernelWriter(kernel)
        writer.start()
        await asyncio.gather(*(writer.elements(add(f"192.0.2.{i}")) for i in range(1, 21)))
        await writer.close()

    asyncio.run(main())
    assert kernel.values("block_v4") == {f"192.0.2.{i}" for i in range(1, 21)}
    assert len(kernel.batches) <= 2  # the first alone, the other 19 coalesced


def test_a_refused_coalesced_batch_is_retried_job_by_job() -> None:
    kernel = kernel_with_set()
    bad = [b.add(b.element("no_such_set", ["192.0.2.99"]))]

    async def main() -> list[BaseException | None]:
        writer = KernelWriter(kernel)
        writer.start()
        results = await asyncio.gather(
            writer.elements(add("192.0.2.1")),
            writer.elements(add("192.0.2.2")),
            writer.elements(bad),
            writer.elements(add("192.0.2.3")),
            return_exceptions=True,
        )
        await writer.close()
        return list(results)

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "ApplyError", "NoneType"]
    assert kernel.values("block_v4") == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}


class Exploding(FakeKernel):
    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise KeyError("a bug in the kernel interface")


def test_an_unexpected_exception_ends_the_writer_and_fails_every_waiter() -> None:
    async def main() -> None:
        writer = KernelWriter(Exploding())
        task = asyncio.get_running_loop().create_task(writer.run())
        waiting = [writer.elements(add("192.0.2.1")), writer.elements(add("192.0.2.2"))]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, KeyError) for r in results)
        with pytest.raises(KeyError):
            await asyncio.wait_for(task, 1)  # the loop itself ended: the task group sees it
        assert not writer.healthy()
        with pytest.raises(KeyError):  # later callers do not wait forever either
            await asyncio.wait_for(writer.elements(add("192.0.2.3")), 1)

    asyncio.run(main())


def test_a_refusal_is_the_callers_problem_not_the_writers() -> None:
    kernel = kernel_with_set()

    async def main() -> None:
        writer = KernelWriter(kernel)
        writer.start()
        kernel.refuse_next("Could not process rule: Invalid argument")
        with pytest.raises(ApplyError, match="Invalid argument"):
            await writer.elements(add("192.0.2.1"))
        await writer.elements(add("192.0.2.2"))
        assert writer.healthy()
        await writer.close()

    asyncio.run(main())
    assert kernel.values("block_v4") == {"192.0.2.2"}


def test_a_job_running_too_long_makes_the_writer_unhealthy() -> None:
    clock = FakeClock()
    writer = KernelWriter(kernel_with_set(), monotonic=clock.monotonic)
    assert writer.healthy()
    writer._busy_since = clock.monotonic()
    clock.advance(STALL_SECONDS + 1)
    assert not writer.healthy()


def test_a_small_element_batch_is_written_from_the_loop_and_a_large_one_in_the_thread() -> None:
    """Two thread hand-offs cost more than a netlink write of a few elements (≈ 15 % of a
    single ban's CPU): the kernel port writes those at once, on the loop's thread."""
    import threading  # noqa: PLC0415

    kernel = kernel_with_set()
    threads: list[str] = []
    original = kernel.run

    def run(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        threads.append(threading.current_thread().name)
        return original(commands)

    kernel.run = run  # type: ignore[method-assign]
    big = [b.add(b.element("block_v4", [f"198.51.100.{i}" for i in range(1, 101)]))]
    big += [b.add(b.element("block_v4", [f"203.0.113.{i}"])) for i in range(1, 101)]

    async def main() -> None:
        writer = KernelWriter(kernel)
        writer.start()
        await writer.elements(add("192.0.2.1"))
        await writer.elements(big)
        with pytest.raises(ApplyError):
            await writer.elements([b.add(b.element("no_such_set", ["192.0.2.9"]))])
        await writer.elements(add("192.0.2.2"))  # a refusal leaves the writer working
        await writer.close()
        assert writer.stats.jobs_ok == 3 and writer.stats.jobs_failed == 1

    asyncio.run(main())
    loop_thread = threading.main_thread().name
    assert threads[0] == loop_thread and threads[-1] == loop_thread
    assert threads[1] != loop_thread  # 200 commands: the writer's thread
    assert kernel.quick_batches == 3
    assert {"192.0.2.1", "192.0.2.2", "203.0.113.7"} <= kernel.values("block_v4")
