"""The daemon's state as a metrics snapshot (layer L3).

Owns: turning the services' snapshots (generation, block counts, status counters, `Stats`)
and the kernel's named rule counters into one immutable `Snapshot` (conntrack gauges come
from the detection service; other features report theirs through `Stats.sandbox()`).
Every source is O(1) or O(rules): block counts are kept incrementally by the BlockTable,
nothing lists a kernel set. The rule
counters are read over netlink (adapters/nftcounters.py, ~3 ms for 1,000 counters whatever
the sets hold) at most once per `COUNTERS_MAX_AGE`, however many scrapers ask.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aitherfwd import __version__
from aitherfwd.adapters import nftcounters
from aitherfwd.daemon.services import Services
from aitherfwd.nft import geo
from aitherfwd.nft import names as n
from aitherfwd.stats import EventValues, Pairs, RuleCounters, Snapshot

log = logging.getLogger(__name__)
COUNTERS_MAX_AGE = 1.0  # seconds a reading of the kernel counters is served from cache
COUNTERS_TIMEOUT = 2.0  # a scrape waits at most this long for a reading, then serves the last
Reader = Callable[[], nftcounters.Counters]
ZERO = (0, 0)


class Layout:
    """The kernel counters of one generation's rules, and their (rule, action) labels."""

    def __init__(self, entries: list[tuple[str, str, str]]) -> None:  # (counter, rule, action)
        self.names = tuple(e[0] for e in entries)
        self.labels = tuple((e[1], e[2]) for e in entries)

    def read(self, counters: nftcounters.Counters) -> RuleCounters:
        get = counters.get
        return RuleCounters(self.labels, tuple([get(name, ZERO) for name in self.names]))


EMPTY = Layout([])
# label values exported at 0 before they first happen, so rate() and alerts see them
RELOAD_RESULTS = ("applied", "rejected", "unchanged")
BLOCK_REASONS = ("manual", "reputation", "detection")
ESCALATION_TARGETS = ("temporary", "permanent")


class Telemetry:
    def __init__(
        self,
        services: Services,
        read_counters: Reader = nftcounters.read,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self._read = read_counters
        self._monotonic = monotonic
        self._counters: nftcounters.Counters = {}
        self._read_at: float | None = None
        self._reading: asyncio.Task[None] | None = None
        self._layout: tuple[int, Layout, Layout] = (-1, EMPTY, EMPTY)

    # --- kernel counters ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the kernel counters unless a reading is fresh; concurrent callers share one."""
        now = self._monotonic()
        if self._read_at is not None and now - self._read_at < COUNTERS_MAX_AGE:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._fetch())
        try:
            await asyncio.wait_for(asyncio.shield(self._reading), COUNTERS_TIMEOUT)
        except TimeoutError:
            log.warning("kernel counters not read in time; serving the last reading")

    async def _fetch(self) -> None:
        try:
            self._counters = await asyncio.to_thread(self._read)
        except OSError as exc:
            log.warning("kernel counters unreadable error=%s", exc)
            return
        self._read_at = self._monotonic()

    def _rules(self) -> tuple[Layout, Layout]:
        gen = self.services.generations.generation
        if gen is None:
            return EMPTY, EMPTY
        if self._layout[0] != gen.number:
            policy = gen.policy
            rules = [(n.rule_counter(r.name), r.name, str(r.action)) for r in policy.rules]
            rules.append((n.DEFAULT_COUNTER, "default", str(policy.settings.default_policy)))
            limited = [
                (n.ratelimit_counter(r.name), r.name, "drop") for r in policy.rules if r.rate_limit
            ]
            self._layout = (gen.number, Layout(rules), Layout(limited))
        return self._layout[1], self._layout[2]

    # --- the snapshot ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        d = self.services
        st = d.stats
        g = d.generations.status()
        gen = g.generation
        rules, limited = self._rules()
        get = self._counters.get
        dropped = {
            "blocklist": get(n.BLOCKED_COUNTER, (0, 0)),
            "invalid": get(n.INVALID_COUNTER, (0, 0)),
            "country": get(geo.COUNTRY_COUNTER, (0, 0)),
            "list": get(geo.LIST_COUNTER, (0, 0)),
        }
        age = -1.0 if self._read_at is None else self._monotonic() - self._read_at
        # O(sources) for the peak, not O(blocks)
        entries, peak = d.detection.entries(), d.detection.max_per_source()
        return Snapshot(
            version=__version__,
            events=_seed(st.events()),
            generation=gen.number if gen else 0,
            policy_sha256=gen.policy.sha256 if gen else "",
            rules=rules.read(self._counters),
            ratelimited=limited.read(self._counters),
            dropped=tuple((k, v[0]) for k, v in sorted(dropped.items())),
            dropped_bytes=tuple((k, v[1]) for k, v in sorted(dropped.items())),
            counters_age_seconds=round(age, 3),
            blocked=tuple((f, k, c) for (f, k), c in sorted(d.blocks.table.kinds().items())),
            reloads=_seeded(RELOAD_RESULTS, tuple(g.reloads.items())),
            drift_repairs=g.drift_repairs,
            audit_write_errors=d.ports.audit.errors,
            notifications_dropped=d.ports.notifier.stats.dropped,
            conntrack_entries=entries,
            conntrack_max_per_source=peak,
            sandbox_grants=(("ipv4", st.sandbox_v4), ("ipv6", st.sandbox_v6)),
            sandbox_grants_total=st.sandbox_granted_total,
            **_geo(d),
            fleet=None if d.fleet is None else d.fleet.values(),
        )

    async def fresh_snapshot(self) -> Snapshot:
        await self.refresh()
        return self.snapshot()


def _geo(d: Services) -> dict[str, Any]:
    g = d.geo
    sources = sorted(g.sources.values(), key=lambda s: s.source)
    return {
        "geo_set_elements": tuple(g.set_sizes().items()),
        "geo_refreshed_at": tuple((s.source, s.at or 0.0) for s in sources),
        "geo_source_ok": tuple((s.source, int(s.ok)) for s in sources),
        "geo_refreshes": tuple(sorted(g.refreshes.items())),
    }


def _seeded(names: tuple[str, ...], pairs: Pairs) -> Pairs:
    merged = dict.fromkeys(names, 0)
    merged.update(pairs)
    return tuple(sorted(merged.items()))


def _seed(ev: EventValues) -> EventValues:
    return replace(
        ev,
        blocks=_seeded(BLOCK_REASONS, ev.blocks),
        escalations=_seeded(ESCALATION_TARGETS, ev.escalations),
    )
