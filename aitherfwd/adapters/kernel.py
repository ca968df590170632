"""The daemon's kernel port over its two write paths (layer L2).

Owns: routing each transaction to the path that fits it — element-only batches (bans,
unbans, grants, resolved addresses, restores, element repairs) to the netlink element
writer (adapters/elementwriter.py), everything else (tables, chains, rules, set
definitions, listings) to libnftables (adapters/nft.py) — and keeping the element writer's
knowledge of our sets' shapes current from what passes through: every successful
libnftables transaction and every listing of the table. Element batches whose sets it does
not know yet, or elements it cannot encode, go to libnftables as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aitherfwd.adapters import memory
from aitherfwd.adapters.elementwriter import ElementWriter
from aitherfwd.adapters.nft import Nft
from aitherfwd.adapters.nftelements import ElementError
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.reconcile import Observed

log = logging.getLogger(__name__)
# element changes a batch may hold to be written from the event loop (run_quick)
QUICK_ELEMENTS = 64
Json = dict[str, Any]


def _plain(command: Json) -> Json:
    """A command as JSON can carry it: a lazy sequence of elements (geo/elements.py)
    becomes a list for libnftables."""
    ec = b.element_command(command)
    if ec is None or isinstance(ec.elements, list):
        return command
    ((verb, body),) = command.items()
    return {verb: {"element": {**body["element"], "elem": list(ec.elements)}}}


class NftKernel:
    def __init__(self, nft: Nft | None = None, elements: ElementWriter | None = None) -> None:
        self.nft = nft or Nft()
        self.elements = elements or ElementWriter()
        self.netlink_batches = 0  # element batches sent by netlink (status, tests)
        self._updates: bool | None = None
        # told of every transaction that changes something: (accepted, seconds, elements)
        self.observer: Callable[[bool, float, int], None] | None = None

    # --- the Kernel port ---------------------------------------------------------------------

    def run(self, commands: list[Json]) -> list[Json]:
        if self.elements.writable(commands):
            try:
                self._write_elements(commands)
                return []
            except ElementError as exc:
                log.warning("element batch not encodable, sending it by libnftables error=%s", exc)
        self.nft.observer = self.observer
        out = self.nft.run([_plain(c) for c in commands])
        self.elements.learn_commands(commands)
        return out

    def run_quick(self, commands: list[Json]) -> bool:
        """A batch of at most QUICK_ELEMENTS element changes goes out by netlink from the
        caller's thread (the event loop): one sendmsg and its acks, tens of microseconds,
        whatever any set holds — handing it to the writer's thread and back cost more
        than the write itself (≈ 15 % of a single ban's CPU). Anything else (libnftables,
        whose cache fill can take seconds) stays in the thread."""
        if len(commands) > QUICK_ELEMENTS or not self.elements.writable(commands):
            return False
        if sum(len(ec.elements) for c in commands if (ec := b.element_command(c))) > (
            QUICK_ELEMENTS
        ):
            return False
        try:
            self._write_elements(commands)
        except ElementError:
            return False  # not encodable: `run` sends it by libnftables, in the thread
        return True

    def observe(self) -> Observed:
        observed = self.nft.observe()
        self.elements.learn_sets(observed.sets if observed.exists else {})
        return observed

    def set_elements(self, set_name: str) -> list[Any]:
        return self.nft.set_elements(set_name)

    def generation(self) -> int | None:
        return self.nft.generation()

    def updates_timeouts(self) -> bool:
        """Probed once on the IPv4 block set (adapters/elementwriter.py)."""
        if self._updates is None:
            try:
                self._updates = self.elements.updates_timeouts(n.BLOCK_SETS[0].name)
            except (ApplyError, OSError) as exc:
                log.warning("timeout-update probe failed; re-blocks add, delete, add error=%s", exc)
                self._updates = False
            log.info("kernel updates element timeouts in place: %s", self._updates)
        return self._updates

    def close(self) -> None:
        self.elements.close()

    # --- internals ---------------------------------------------------------------------------

    def _write_elements(self, commands: list[Json]) -> None:
        count = sum(len(ec.elements) for c in commands if (ec := b.element_command(c)))
        started = time.perf_counter()
        try:
            self.elements.run(commands)
        except ApplyError:
            self._observed(False, started, count)
            raise
        self.netlink_batches += 1
        self._observed(True, started, count)
        if count >= memory.LARGE_BATCH:
            memory.trim()  # the batch's bytes and the caller's commands are garbage now

    def _observed(self, ok: bool, started: float, count: int) -> None:
        if self.observer is not None:
            self.observer(ok, time.perf_counter() - started, count)
