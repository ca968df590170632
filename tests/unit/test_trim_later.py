"""A large request's garbage is freed after its answer, then the heap is trimmed once
(adapters/memory.py `trim_later`): no root, a real event loop."""

from __future__ import annotations

import asyncio
import weakref

import pytest

from aitherfwd.adapters import memory


class Body:
    """Stands for a request's parsed JSON (a weak reference tells when it is freed)."""


def test_the_garbage_is_freed_first_and_calls_share_one_trim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.05)
    monkeypatch.setattr(memory, "trim", lambda: trims.append(len(trims)))

    async def main() -> list[bool]:
        body, other = Body(), Body()
        refs = [weakref.ref(body), weakref.ref(other)]
        memory.trim_later()  # the blocks service's, with nothing to free
        memory.trim_later(body)  # the handler's, with the request's body
        memory.trim_later(other)
        del body, other
        alive = [r() is not None for r in refs]  # held until the trim
        await asyncio.sleep(0.2)
        return alive + [r() is not None for r in refs]

    assert asyncio.run(main()) == [True, True, False, False]
    assert trims == [0]  # one trim for the three calls


def test_a_trim_left_pending_by_a_closed_loop_does_not_hold_the_next_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.05)
    monkeypatch.setattr(memory, "trim", lambda: trims.append(len(trims)))

    async def closes_early() -> None:
        memory.trim_later(Body())  # the loop ends before its trim is due

    async def waits() -> None:
        memory.trim_later(Body())
        await asyncio.sleep(0.2)

    asyncio.run(closes_early())
    asyncio.run(waits())
    assert trims == [0]
