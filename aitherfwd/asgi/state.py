"""What the middleware knows of the daemon, kept current by the watch stream (no I/O).

Owns: `Followed` — the current `View` (None until the first policy arrives), the block table
the daemon announced (`aitherfwd.dynamic.blocks.BlockTable`, expiring by itself), whether the
stream is live, and the counters the middleware exports (`stats()`). `apply(event, now)`
takes one decoded line of `GET /v1/watch`: a snapshot (after every (re)connection) is built
aside and swapped in at its `ready`, so the last known blocks keep judging while a new
snapshot arrives; later `block` / `unblock` / `policy` lines change the live state at once.
`lost()` and `ready` keep the live flag: the middleware keeps judging with what it has while
the daemon is gone (fail static) and says so once.

Thread-safe: the follower thread writes, the server's event loop reads; one lock guards the
table, the view is swapped as one reference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aitherfwd.asgi.view import View, build_view
from aitherfwd.control import policyview
from aitherfwd.dynamic.blocks import Block, BlockTable
from aitherfwd.policy.model import IPAddress, IPNetwork

log = logging.getLogger("aitherfwd.asgi")


class ProtocolError(ValueError):
    """A watch line that does not fit the protocol: the stream is dropped and reopened."""


class Followed:
    def __init__(
        self,
        trusted_cidrs: Sequence[IPNetwork],
        trusted_zones: Sequence[str],
        bypass_zones: Sequence[str],
    ) -> None:
        self._trusted_cidrs = tuple(trusted_cidrs)
        self._trusted_zones = tuple(trusted_zones)
        self._bypass_zones = tuple(bypass_zones)
        self.view: View | None = None
        self.live = False
        self.counters: Counter[str] = Counter()
        self.changed_at = 0.0  # wall clock when the last block or unblock line was applied
        self._lock = threading.Lock()
        self._table = BlockTable()
        self._incoming: BlockTable | None = None  # a snapshot being received
        self._ever_live = False
        self._warned_zones: tuple[str, ...] = ()

    # --- read side (the event loop) ---------------------------------------------------------

    def lookup(self, address: IPAddress, now: float) -> tuple[float | None, str] | None:
        """`evaluator.Blocked`: the daemon's block of `address`, if any."""
        with self._lock:
            return self._table.lookup(address, now)

    def blocks(self) -> int:
        with self._lock:
            return len(self._table)

    def stats(self) -> dict[str, int]:
        view = self.view
        out = dict(sorted(self.counters.items()))
        out["live"] = int(self.live)
        out["generation"] = view.generation if view is not None else 0
        out["blocks"] = self.blocks()
        return out

    # --- write side (the follower thread) ---------------------------------------------------

    def apply(self, event: Any, now: float) -> None:
        """One line of the watch stream; raises ProtocolError for one that does not fit."""
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise ProtocolError("a watch line without an event name")
        kind = event["event"]
        try:
            if kind == "policy":
                self._policy(event)
            elif kind in ("blocks", "block"):
                self._blocks(event, now, snapshot=kind == "blocks")
            elif kind == "unblock":
                self._unblock(event, now)
            elif kind == "ready":
                self._ready(now)
            elif kind == "overflow":
                raise ProtocolError("the daemon cut this stream off: it fell behind")
            # heartbeat and events of later versions: nothing to do
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"bad {kind!r} line: {exc}") from exc

    def _policy(self, event: dict[str, Any]) -> None:
        generation = event.get("generation")
        if not isinstance(generation, int):
            raise ProtocolError("a policy line without a generation")
        policy = policyview.decode(event.get("policy"))
        view = build_view(
            policy, generation, self._trusted_cidrs, self._trusted_zones, self._bypass_zones
        )
        if view.unknown_zones and view.unknown_zones != self._warned_zones:
            self._warned_zones = view.unknown_zones
            log.warning(
                "aitherfwd middleware: zones not in the policy zones=%s",
                ",".join(view.unknown_zones),
            )
        self.view = view
        self.counters["policies"] += 1

    def _blocks(self, event: dict[str, Any], now: float, *, snapshot: bool) -> None:
        records = event.get("blocks")
        if not isinstance(records, list):
            raise ProtocolError("a blocks line without blocks")
        blocks = [policyview.decode_block(r, now) for r in records]
        if snapshot:
            if self._incoming is None:
                self._incoming = BlockTable()
            self._incoming.load(blocks)
            return
        with self._lock:
            _put(self._table, blocks, now)
        if self._incoming is not None:  # a change that raced the snapshot
            _put(self._incoming, blocks, now)
        self.counters["block_events"] += 1
        self.changed_at = time.time()

    def _unblock(self, event: dict[str, Any], now: float) -> None:
        keys = event.get("addresses")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ProtocolError("an unblock line without addresses")
        with self._lock:
            for key in keys:
                self._table.remove(key, now)
        if self._incoming is not None:
            for key in keys:
                self._incoming.remove(key, now)
        self.counters["unblock_events"] += 1
        self.changed_at = time.time()

    def _ready(self, now: float) -> None:
        if self.view is None:
            raise ProtocolError("ready before any policy")
        incoming, self._incoming = self._incoming or BlockTable(), None
        incoming.prune(now)
        with self._lock:
            self._table = incoming
        if not self.live:
            if self._ever_live:
                log.warning(
                    "aitherfwd middleware: daemon reachable again; live generation=%d",
                    self.view.generation,
                )
            self.live = self._ever_live = True

    def lost(self, reason: str, now: float) -> None:
        """The stream is gone (or never came): judge with what we have, say so once."""
        self._incoming = None
        with self._lock:
            self._table.prune(now)
        if self.live:
            self.live = False
            self.counters["daemon_lost"] += 1
            log.warning(
                "aitherfwd middleware: daemon unreachable, judging with the last policy "
                "(generation %d) and blocks until it is back reason=%s",
                self.view.generation if self.view is not None else 0,
                reason,
            )
        elif not self._ever_live and not self.counters["never_reached"]:
            self.counters["never_reached"] += 1
            log.warning(
                "aitherfwd middleware: daemon unreachable and no policy yet; answering as "
                "fail_open says until it is reached reason=%s",
                reason,
            )


def _put(table: BlockTable, blocks: list[Block], now: float) -> None:
    """Record blocks; a re-block replaces the old record (and its expiry)."""
    table.prune(now)
    for blk in blocks:
        table.remove(blk.key, now)
    table.load(blocks)
