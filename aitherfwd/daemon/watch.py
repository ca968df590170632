"""The watch stream, `GET /v1/watch` (layer L3): the daemon's changes as they happen.

Owns: `WatchHub` — the open watch streams, bounded (`[control] watchers` in all,
`watchers_per_uid` per peer uid; over either a 429 `E-WATCH-LIMIT`), each with a bounded
queue of pending lines (`QUEUE_LINES`; a watcher that falls that far behind gets an
`overflow` event and its stream ends: it reconnects and starts from a fresh snapshot) — and
what it publishes, one JSON object per line:

    {"event": "policy", "generation": N, "policy": {...}}   first, then on every new generation
    {"event": "blocks", "blocks": [{"address", "expires_at"}, ...]}   the snapshot, ≤ 1000 each
    {"event": "ready", "blocks": COUNT}                       end of the snapshot
    {"event": "block", "blocks": [...]}                       new blocks (any source)
    {"event": "unblock", "addresses": [...]}                  lifted blocks
    {"event": "heartbeat", "time": T}                         every HEARTBEAT s when idle

Expired blocks are not announced: each record carries its expiry. Blocks another tool put
in the kernel's sets are announced once the drift check adopts them. The policy is the inbound
view of control/policyview.py. Hooks: a listener on `Generations`, `BlockService.on_blocked`
and `on_unblocked` (chained after what was there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from aitherfwd.control import policyview
from aitherfwd.daemon.services import Services
from aitherfwd.dynamic.blockrecords import Block, Key, text_of
from aitherfwd.errors import RequestError
from aitherfwd.policy.model import Policy

log = logging.getLogger(__name__)
HEARTBEAT = 10.0  # seconds between heartbeats of an idle stream
QUEUE_BYTES = 4 << 20  # pending bytes per watcher before it is cut off
SNAPSHOT_CHUNK = 1000  # blocks per snapshot line


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), allow_nan=False).encode() + b"\n"


class Watcher:
    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.pending: deque[bytes] = deque()
        self.queued = 0  # bytes in `pending`
        self.wake = asyncio.Event()
        self.overflowed = False

    def push(self, line: bytes) -> None:
        if self.overflowed:
            return
        if self.queued + len(line) > QUEUE_BYTES:
            self.overflowed = True
            self.pending.clear()
            self.queued = 0
        else:
            self.pending.append(line)
            self.queued += len(line)
        self.wake.set()

    def take(self) -> bytes:
        lines = b"".join(self.pending)
        self.pending.clear()
        self.queued = 0
        return lines


def _encode_blocks(pairs: list[tuple[Key, float | None]], now: float) -> list[bytes]:
    """The snapshot's `blocks` lines (off the event loop: 1,000,000 blocks take ~5 s)."""
    live = [(text_of(k), x) for k, x in pairs if x is None or x > now]
    return [
        _line({"event": "blocks", "blocks": [{"address": a, "expires_at": x} for a, x in part]})
        for part in (live[i : i + SNAPSHOT_CHUNK] for i in range(0, len(live), SNAPSHOT_CHUNK))
    ] + [_line({"event": "ready", "blocks": len(live)})]


class WatchHub:
    def __init__(self, services: Services, total: int = 64, per_uid: int = 4) -> None:
        self.services = services
        self.total, self.per_uid = total, per_uid
        self.watchers: set[Watcher] = set()
        self.by_uid: Counter[int] = Counter()
        self.overflows = 0
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
        self.version = 0  # bumped by every change: a snapshot is shared while it holds
        self._snapshot: tuple[int, asyncio.Future[list[bytes]]] | None = None
        blocks = services.blocks
        previous_unblocked = blocks.on_unblocked
        previous_blocked = blocks.on_blocked

        def unblocked(blk: Block, now: float) -> None:
            previous_unblocked(blk, now)
            self.publish({"event": "unblock", "addresses": [blk.key]})

        def blocked(new: Sequence[Block], now: float) -> None:
            previous_blocked(new, now)
            if threading.get_ident() != self._thread:  # adopted from the kernel by the writer
                self._loop.call_soon_threadsafe(blocked_here, new)
            else:
                blocked_here(new)

        def blocked_here(new: Sequence[Block]) -> None:
            for i in range(0, len(new), SNAPSHOT_CHUNK):
                part = new[i : i + SNAPSHOT_CHUNK]
                self.publish(
                    {"event": "block", "blocks": [policyview.block_record(b) for b in part]}
                )

        blocks.on_unblocked = unblocked
        blocks.on_blocked = blocked
        services.generations.listeners.append(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        # called just before the new generation is swapped in: publish once it is
        # no running loop: a cold start outside the event loop, which has no watchers yet
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon(self._publish_generation)

    def _publish_generation(self) -> None:
        if self.watchers:
            self.publish(self._policy_event())

    def _policy_event(self) -> dict[str, Any]:
        gen = self.services.generations.current()
        return {
            "event": "policy",
            "generation": gen.number,
            "policy": policyview.encode(gen.policy),
        }

    def publish(self, event: dict[str, Any]) -> None:
        self.version += 1
        self._snapshot = None  # stale: the streams still sending it hold their own reference
        if not self.watchers:
            return
        line = _line(event)
        for w in self.watchers:
            w.push(line)

    def open(self, uid: int, *, admin: bool) -> Watcher:
        if len(self.watchers) >= self.total:
            raise RequestError(
                f"too many watch streams (limit {self.total}); retry later", code="E-WATCH-LIMIT"
            )
        if not admin and self.by_uid[uid] >= self.per_uid:
            raise RequestError(
                f"too many watch streams of uid {uid} (limit {self.per_uid})",
                code="E-WATCH-LIMIT",
            )
        w = Watcher(uid)
        self.watchers.add(w)
        self.by_uid[uid] += 1
        return w

    def close(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.discard(w)
            self.by_uid[w.uid] -= 1
            if self.by_uid[w.uid] <= 0:
                del self.by_uid[w.uid]

    def _blocks_snapshot(self) -> asyncio.Future[list[bytes]]:
        """The encoded blocks of now, shared by every watcher that asks before the next
        change: the copy is taken in the loop (~40 ms per 100,000 blocks), encoded in a
        thread; at most one snapshot per version is ever held by the hub."""
        if self._snapshot is not None and self._snapshot[0] == self.version:
            return self._snapshot[1]
        pairs = self.services.blocks.table.expiries()
        now = self.services.ports.clock.now()
        future = asyncio.ensure_future(asyncio.to_thread(_encode_blocks, pairs, now))
        self._snapshot = (self.version, future)
        return future

    def stream(self, w: Watcher) -> Stream:
        """The watcher's lines: its snapshot (taken when first asked, later than the
        watcher's first queued change: replaying the queue over it ends in the latest
        state), then its queue as it fills; ends on overflow. `aclose` closes the watcher,
        started or not."""
        return Stream(self, w)

    async def _lines(self, w: Watcher) -> AsyncGenerator[bytes]:
        try:
            policy = _line(self._policy_event())
            lines = await asyncio.shield(self._blocks_snapshot())
            yield policy
            for i in range(0, len(lines), 16):
                yield b"".join(lines[i : i + 16])
            del lines
            while True:
                if not w.pending and not w.overflowed:
                    w.wake.clear()
                    try:
                        async with asyncio.timeout(HEARTBEAT):
                            await w.wake.wait()
                    except TimeoutError:
                        now = self.services.ports.clock.now()
                        yield _line({"event": "heartbeat", "time": now})
                        continue
                if w.overflowed:
                    self.overflows += 1
                    log.warning("watch stream overflowed uid=%d bytes=%d", w.uid, QUEUE_BYTES)
                    yield _line({"event": "overflow", "bytes": QUEUE_BYTES})
                    return
                yield w.take()
        finally:
            self.close(w)


class Stream:
    """An async iterator of a watcher's lines that gives its slot back on `aclose`."""

    def __init__(self, hub: WatchHub, w: Watcher) -> None:
        self._hub, self._w = hub, w
        self._lines = hub._lines(w)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._lines)

    async def aclose(self) -> None:
        self._hub.close(self._w)
        await self._lines.aclose()
