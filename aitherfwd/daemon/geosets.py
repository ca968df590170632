"""Country and list sets: reading the sources, filling and refreshing the kernel (layer L3).

Owns: which sources the policy needs (the `geoip:` database for the countries it names,
each `lists:` file), reading them off the event loop (adapters/geodb.py), keeping the last
good contents of each source (a reader error never empties a set: it is reported in
`status()`, the audit trail and the metrics), and writing the sets through the one kernel
writer as ONE transaction per refresh, sent by the netlink element writer:

- a set this process has not filled yet (a new set, or the first refresh after a start,
  when the kernel may hold what an earlier daemon left) is flushed and refilled in the same
  transaction — atomic, so packets never see it empty;
- afterwards, only the delta: changed and vanished ranges deleted, new ones added, so a
  refresh that changes 1% of a 300,000-prefix database sends 1% of it.

`refresh()` runs on policy changes (`configure`) and when a source file changes (the
composition root watches the files with adapters/watch.py). Only the wanted countries are
kept in memory, as compact ranges (geo/ranges.py): they answer evaluate and explain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitherfwd.adapters import geodb
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.audit_records import GeoRefreshed, GeoRefreshFailed
from aitherfwd.clock import Clock
from aitherfwd.daemon.ports import Kernel
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.errors import AitherError
from aitherfwd.geo.elements import RangeElements
from aitherfwd.geo.ranges import Delta, ParsedList, PrefixSet, Range, Ranges, delta
from aitherfwd.nft import geo as g
from aitherfwd.nft.names import TABLE
from aitherfwd.policy.model import IPAddress, Policy

log = logging.getLogger(__name__)
Json = dict[str, Any]
GEOIP = "geoip"


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source's last refresh: when, whether it was read, what it holds."""

    source: str  # "geoip" or "list:<name>"
    path: str
    ok: bool
    at: float | None
    error: str | None = None
    elements: int = 0  # ranges in the kernel from this source
    bad_lines: int = 0
    bad_line_numbers: tuple[int, ...] = ()


@dataclass
class GeoSets:
    clock: Clock
    writer: KernelWriter
    audit: AuditLog
    read_countries: Callable[[Path], dict[str, PrefixSet]] = geodb.read_countries
    read_list: Callable[[Path], ParsedList] = geodb.read_list
    policy: Policy | None = None
    contents: dict[str, PrefixSet] = field(default_factory=dict)  # "geoip:XX", "list:name"
    loaded: dict[str, Ranges] = field(default_factory=dict)  # set name -> kernel ranges
    sources: dict[str, SourceStatus] = field(default_factory=dict)
    refreshes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    fingerprint: Callable[[Path], str | None] = geodb.fingerprint
    # source -> (what was read: path and countries; the file's fingerprint then)
    _read_as: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # --- what the rest of the daemon sees -------------------------------------------------

    def configure(self, policy: Policy) -> None:
        """A policy took effect: its sets exist now (declared by the ruleset); fill them."""
        self.policy = policy
        wanted = g.wanted(policy)
        self.loaded = {k: v for k, v in self.loaded.items() if k in wanted}
        self._wake.set()

    def table_repaired(self) -> None:
        """Drift repair re-applied the ruleset (maybe re-creating our sets empty): refill
        every set from the contents held, flushing first."""
        self.loaded = {}
        self._wake.set()

    def files(self) -> list[Path]:
        p = self.policy
        if p is None:
            return []
        out = [Path(x.path) for x in p.lists]
        if p.geoip is not None and g.countries(p):
            out.append(Path(p.geoip.database))
        return out

    async def changed(self) -> None:
        """A source file changed (the watcher): refresh now."""
        await self.refresh("inotify")

    def country_of(self, address: IPAddress) -> str | None:
        for key, prefixes in self.contents.items():
            if key.startswith("geoip:") and prefixes.contains(address):
                return key.removeprefix("geoip:")
        return None

    def lists_of(self, address: IPAddress) -> tuple[str, ...]:
        return tuple(
            key.removeprefix("list:")
            for key, prefixes in sorted(self.contents.items())
            if key.startswith("list:") and prefixes.contains(address)
        )

    def set_sizes(self) -> dict[str, int]:
        return {name: len(r) for name, r in sorted(self.loaded.items())}

    def status(self) -> dict[str, Any]:
        """The `geo` section of /v1/status: sets with their ranges, sources with their last
        refresh (time, result, error, bad lines)."""
        return {
            "sets": self.set_sizes(),
            "refreshes": dict(self.refreshes),
            "sources": {
                s.source: {
                    "path": s.path,
                    "ok": s.ok,
                    "at": s.at,
                    "error": s.error,
                    "elements": s.elements,
                    "bad_lines": s.bad_lines,
                    "bad_line_numbers": list(s.bad_line_numbers),
                }
                for s in sorted(self.sources.values(), key=lambda s: s.source)
            },
        }

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh whenever a policy takes effect (configure wakes it)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.refresh("policy")

    async def refresh(self, trigger: str) -> bool:
        """Read every source, then write what changed in one transaction. True when the
        kernel holds the sources' last good contents."""
        async with self._lock:
            policy = self.policy
            if policy is None or not g.wanted(policy):
                return True
            bad = await self._read(policy)
            desired = self._desired(policy)
            commands, deltas = self._commands(desired)
            if commands:
                try:
                    await self.writer.call(lambda k: _run(k, commands))
                except AitherError as exc:
                    log.warning("geo sets refused by the kernel error=%s", exc)
                    self.loaded = {}  # next time: flush and refill every set
                    self.refreshes["failed"] += 1
                    return False
                self.loaded.update(desired)
            self._report(policy, deltas, bad)
            log.info("geo sets refreshed trigger=%s commands=%d", trigger, len(commands))
            return not bad

    async def _read(self, policy: Policy) -> set[str]:
        """Read each source; on failure keep its last good contents. The failed sources."""
        failed: set[str] = set()
        now = self.clock.now()
        codes = g.countries(policy)
        if policy.geoip is not None and codes and self._stale(GEOIP, policy.geoip.database, codes):
            path = policy.geoip.database
            print_before = self.fingerprint(Path(path))
            try:
                found = await asyncio.to_thread(self.read_countries, Path(path))
            except AitherError as exc:
                failed.add(GEOIP)
                self._failed(GEOIP, path, exc, now)
            else:
                for key in [k for k in self.contents if k.startswith("geoip:")]:
                    del self.contents[key]
                for code in codes:
                    self.contents[f"geoip:{code}"] = found.get(code, PrefixSet())
                self.sources[GEOIP] = SourceStatus(GEOIP, path, True, now)
                self._read_as[GEOIP] = (f"{path}\0{','.join(codes)}", print_before)
                del found  # the other countries: read and dropped
        for plist in policy.lists:
            key = f"list:{plist.name}"
            if not self._stale(key, plist.path):
                continue
            print_before = self.fingerprint(Path(plist.path))
            try:
                parsed = await asyncio.to_thread(self.read_list, Path(plist.path))
            except AitherError as exc:
                failed.add(key)
                self._failed(key, plist.path, exc, now)
                continue
            self.contents[key] = parsed.prefixes
            self._read_as[key] = (plist.path, print_before)
            numbers = tuple(n for n, _ in parsed.bad_lines)
            self.sources[key] = SourceStatus(
                key, plist.path, True, now, None, 0, parsed.bad, numbers
            )
            if parsed.bad:
                log.warning(
                    "list has bad lines list=%s bad=%d first=%s", plist.name, parsed.bad, numbers
                )
        return failed

    def _stale(self, source: str, path: str, codes: list[str] | None = None) -> bool:
        """Does the source need reading: never read, another path or other countries, or
        a file that changed since (size, times, inode)?"""
        last = self._read_as.get(source)
        what = f"{path}\0{','.join(codes)}" if codes is not None else path
        if last is None or last[0] != what or last[1] is None:
            return True
        return self.fingerprint(Path(path)) != last[1]

    def _failed(self, source: str, path: str, exc: AitherError, now: float) -> None:
        log.warning("geo source not read source=%s error=%s", source, exc.message)
        old = self.sources.get(source)
        self.sources[source] = SourceStatus(
            source, path, False, now, exc.message, old.elements if old else 0
        )
        self.refreshes["failed"] += 1
        self.audit.write(now, GeoRefreshFailed(source=source, path=path, reason=exc.message))

    def _desired(self, policy: Policy) -> dict[str, Ranges]:
        out: dict[str, Ranges] = {}
        for name, (kind, key, fam) in g.wanted(policy).items():
            if kind == "blocked":  # the union of the blocked countries
                parts = [self.contents.get(f"geoip:{code}") for code in key.split(",")]
                if any(p is None for p in parts):
                    continue  # never read in this process: the kernel keeps what it holds
                out[name] = Ranges.of(fam, (r for p in parts if p for r in p.family(fam).pairs()))
                continue
            prefixes = self.contents.get(f"{'geoip' if kind == 'country' else 'list'}:{key}")
            if prefixes is None:
                continue  # never read in this process: the kernel keeps what it holds
            out[name] = prefixes.family(fam)
        return out

    def _commands(self, desired: dict[str, Ranges]) -> tuple[list[Json], dict[str, Delta]]:
        commands: list[Json] = []
        deltas: dict[str, Delta] = {}
        for name, ranges in desired.items():
            fam = ranges.family
            old = self.loaded.get(name)
            if old is None:  # flush and refill in the same transaction
                commands.append({"flush": {"set": {**_TABLE, "name": name}}})
                deltas[name] = Delta((), tuple(ranges.pairs()))
                if len(ranges):
                    commands.append(_command("add", name, _elements(fam, ranges.pairs())))
                continue
            d = delta(old, ranges)
            deltas[name] = d
            if d.removed:
                commands.append(_command("delete", name, _elements(fam, d.removed)))
            if d.added:
                commands.append(_command("add", name, _elements(fam, d.added)))
        return commands, deltas

    def _report(self, policy: Policy, deltas: dict[str, Delta], failed: set[str]) -> None:
        now = self.clock.now()
        per_source: dict[str, list[str]] = {}
        for name, (kind, _key, _fam) in g.wanted(policy).items():
            source = f"list:{_key}" if kind == "list" else GEOIP
            per_source.setdefault(source, []).append(name)
        for source, names in per_source.items():
            status = self.sources.get(source)
            if status is None or source in failed:
                continue
            elements = sum(len(self.loaded.get(n, ())) for n in names)
            added = sum(len(deltas[n].added) for n in names if n in deltas)
            removed = sum(len(deltas[n].removed) for n in names if n in deltas)
            self.sources[source] = SourceStatus(
                source,
                status.path,
                True,
                now,
                None,
                elements,
                status.bad_lines,
                status.bad_line_numbers,
            )
            self.refreshes["ok"] += 1
            if added or removed or status.bad_lines:
                self.audit.write(
                    now,
                    GeoRefreshed(
                        source=source,
                        path=status.path,
                        elements=elements,
                        added=added,
                        removed=removed,
                        bad_lines=status.bad_lines,
                    ),
                )


def _run(kernel: Kernel, commands: list[Json]) -> None:
    kernel.run(commands)


_TABLE = {"family": "inet", "table": TABLE}


def _elements(family: int, pairs: Iterable[Range]) -> RangeElements:
    return RangeElements(family, pairs)


def _command(verb: str, name: str, elements: RangeElements) -> Json:
    return {verb: {"element": {**_TABLE, "name": name, "elem": elements}}}
