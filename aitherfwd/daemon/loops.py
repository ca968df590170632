"""The daemon's periodic loops (layer L3): housekeeping, audit flushes, the watchdog.

Owns: the loops the composition root (daemon/main.py) spawns into its one TaskGroup that
only tick — expire blocks and check for drift, write the aggregated audit lines whose
interval is over, ping systemd's watchdog while the kernel writer is healthy. A loop that
raises ends the group (main.py's supervision).
"""

from __future__ import annotations

import asyncio
import logging

from aitherfwd.daemon.api import Api
from aitherfwd.daemon.services import Services
from aitherfwd.errors import AitherError

log = logging.getLogger(__name__)

FULL_CHECK_EVERY = 60.0  # seconds: a listing-based check even when the generation says "ours"


async def housekeeping(s: Services, interval: float) -> None:
    """Expire blocks the kernel has expired, then check for drift (cheap unless someone
    else changed nftables). A refused repair is logged and tried again next turn; any
    other failure ends the daemon (supervision)."""
    loop = asyncio.get_running_loop()
    last_full = loop.time()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        full = now - last_full >= FULL_CHECK_EVERY
        last_full = now if full else last_full
        s.blocks.expire()
        store = s.ports.store
        while store.pending and store.flush_pending():  # room again: catch up part by part,
            await asyncio.sleep(0)  # letting requests in between
        if store.checkpoint_due:  # a large write's WAL (off the loop: tens of ms)
            await asyncio.to_thread(store.checkpoint)
        try:
            await s.generations.check_drift(full=full)
            await s.generations.follow_time_zones()
        except AitherError as exc:
            log.error("drift check failed code=%s error=%s", exc.code, exc.message)


async def flush_audit(api: Api, s: Services) -> None:
    """Write the per-peer counts of refused requests and the summaries of folded automated
    records whose interval is over."""
    while True:
        await asyncio.sleep(1.0)
        api.rejections.flush(s.ports.clock.now())
        if s.audit_budget is not None:
            s.audit_budget.flush(s.ports.clock.now())


async def watchdog(s: Services, interval: float) -> None:
    """WATCHDOG=1 only while the event loop turns AND the kernel writer is alive and
    making progress: a stalled loop or a stuck writer gets the daemon restarted."""
    while True:
        if s.writer.healthy():
            s.ports.systemd.watchdog()
        else:
            log.error("kernel writer stalled or dead; withholding the watchdog ping")
        await asyncio.sleep(interval)
