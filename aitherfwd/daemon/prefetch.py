"""Making the items of an iterator ahead of their consumer, in a thread (layer L3).

Owns: `prefetched`, which runs an iterator in a thread of its own, at most `depth` items
ahead of the consumer. The cold start reads the store and builds the block table in that
thread while the kernel writer's thread sends the previous chunk's elements: the kernel's
work happens inside sendmsg, with the GIL released, and SQLite's inside sqlite3_step, so
on two cores the two overlap (docs/benchmarks-persistence.md). The producer runs to its
end even when the consumer stops early (an error, or `close()`): what it fills (the block
table) is whole when `close()` returns, and its items are dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()
_POLL = 0.05  # seconds between checks of a producer that is still running


def prefetched(
    items: Iterator[T], depth: int = 1, name: str = "prefetch"
) -> Generator[T, None, None]:
    """`items`, in order, each made in a thread while the consumer works on the one
    before. An exception of the producer is raised to the consumer at that point."""
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                slots.put((True, item))
        except BaseException as exc:  # handed over to the consumer, raised there
            slots.put((False, exc))
        else:
            slots.put((True, _DONE))

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok and isinstance(item, BaseException):
                raise item
            if item is _DONE:
                return
            yield item  # type: ignore[misc]  # an item of `items`: a T
    finally:
        while worker.is_alive():  # stopped early: let the producer finish, drop its items
            try:
                slots.get(timeout=_POLL)
            except queue.Empty:
                continue
        worker.join()
