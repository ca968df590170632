"""Detection: kernel denials and conntrack counts → threat events (layer L1, pure; time is an
argument).

Owns: `Detector`, which turns what the kernel reports — denied new connections, refusals
beyond the per-source connection limit, SYNs dropped over the per-source rate (NFLOG group
78, decoded by adapters/nflog.py) — and per-source conntrack counts (adapters/ctnetlink.py)
into `Threat`s for the reputation ladder:

- PORT_SCAN (high): one source touching `settings.scan.ports` distinct denied ports within
  `settings.scan.window` seconds.
- SYN_FLOOD (high): a source whose NEW connection attempts the kernel keeps dropping over
  `syn_flood_threshold` SYNs/s (or whose half-open connections exceed it) for longer than
  `detection_grace`. A retry of a dropped SYN (the same source and destination port, which
  every TCP stack resends 1, 2, 3… s later) is not a new attempt: it neither starts nor
  prolongs a flood, so a client that opened many connections at one moment (a keep-alive
  pool) is the kernel's business, while a flood's ever new source ports are caught as fast
  as before.
- CONNTRACK_LIMIT (medium): a source refused beyond `max_connections_per_ip` that is still
  at its limit, or still being refused, `detection_grace` seconds later.
A burst that ends within the grace period stays the kernel's business. Memory is bounded:
at most `MAX_SOURCES` sources are followed per signal, the least recently seen go first.
Must not import adapters or do I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aitherfwd.nft import names as n
from aitherfwd.policy.model import IPAddress, Settings, Severity

MAX_SOURCES = 10_000
MAX_ATTEMPTS = 1024  # connection attempts remembered per flooding source (retries told apart)
PORT_SCAN = "PORT_SCAN"
SYN_FLOOD = "SYN_FLOOD"
CONNTRACK_LIMIT = "CONNTRACK_LIMIT"


@dataclass(frozen=True, slots=True)
class Denial:
    """One packet the kernel refused, as NFLOG reported it."""

    source: IPAddress
    protocol: int  # IP protocol number (6 tcp, 17 udp, ...)
    port: int  # destination port; 0 when the protocol has none
    kind: str  # names.KIND_DENIED | KIND_CONNLIMIT | KIND_SYNFLOOD | KIND_EGRESS
    rule: str  # the policy rule that denied it ("default", "-" for the kernel meters)
    dest: IPAddress | None = None  # the destination address (what egress audit lines name)
    sport: int = 0  # source port; 0 when unknown (then every SYN report is a new attempt)
    # routed through the host (the forward hook): to or from containers; `port` is then
    # the published port the client asked for, `dest` the container (nft/fwdlog.py)
    forward: bool = False


@dataclass(frozen=True, slots=True)
class Threat:
    type: str
    source: IPAddress
    severity: Severity
    detail: str


@dataclass(slots=True)
class _Episode:
    """A source over a limit: since when, and when the kernel last said so."""

    since: float
    last: float
    hits: int = 0
    attempts: set[int] = field(default_factory=set)  # floods: (sport, dport) seen, bounded


@dataclass(slots=True)
class DetectStats:
    denials: int = 0
    port_scans: int = 0
    syn_floods: int = 0
    conntrack_limits: int = 0
    sampled: int = 0


@dataclass
class Detector:
    settings: Settings
    stats: DetectStats = field(default_factory=DetectStats)
    _ports: OrderedDict[IPAddress, dict[tuple[int, int], float]] = field(
        default_factory=OrderedDict
    )
    _floods: OrderedDict[IPAddress, _Episode] = field(default_factory=OrderedDict)
    _limits: OrderedDict[IPAddress, _Episode] = field(default_factory=OrderedDict)
    _sample_tokens: float = 0.0
    _sample_at: float = 0.0

    def denied(self, d: Denial, now: float) -> list[Threat]:
        """One kernel report; a port scan is decided at once, floods and limits by `tick`."""
        self.stats.denials += 1
        if d.kind == n.KIND_SYNFLOOD:
            self._syn_dropped(d, now)
        elif d.kind == n.KIND_CONNLIMIT:
            _touch(self._limits, d.source, now, self.settings.detection_grace)
        elif d.kind == n.KIND_DENIED and d.port:
            return self._scan(d, now)
        return []

    def _syn_dropped(self, d: Denial, now: float) -> None:
        """A SYN over the meter: a new attempt starts or prolongs an episode, a retry of
        one already seen in it only counts as a report."""
        if not d.sport:
            _touch(self._floods, d.source, now, self.settings.detection_grace)
            return
        key = d.sport << 16 | d.port
        ep = self._floods.get(d.source)
        if ep is not None and now - ep.last <= self.settings.detection_grace:
            ep.hits += 1
            if key in ep.attempts:
                return
            if len(ep.attempts) >= MAX_ATTEMPTS:
                ep.attempts.clear()  # forget; a flood keeps coming with new ports anyway
            ep.attempts.add(key)
            ep.last = now
            return
        _touch(self._floods, d.source, now, self.settings.detection_grace)
        self._floods[d.source].attempts.add(key)

    def _scan(self, d: Denial, now: float) -> list[Threat]:
        scan = self.settings.scan
        seen = self._ports.get(d.source)
        if seen is None:
            seen = self._ports[d.source] = {}
            _bound(self._ports)
        else:
            self._ports.move_to_end(d.source)
        seen[(d.protocol, d.port)] = now
        if len(seen) < scan.ports:
            return []
        for key in [k for k, t in seen.items() if now - t > scan.window]:
            del seen[key]
        if len(seen) < scan.ports:
            return []
        ports = sorted(p for _, p in seen)
        del self._ports[d.source]
        self.stats.port_scans += 1
        detail = (
            f"{len(ports)} distinct denied ports within {scan.window}s "
            f"(e.g. {', '.join(map(str, ports[:8]))}; last denied by rule {d.rule})"
        )
        return [Threat(PORT_SCAN, d.source, Severity.HIGH, detail)]

    def tick(
        self,
        now: float,
        tracked: Callable[[IPAddress], int],
        half_open_over: Iterable[IPAddress] = (),
    ) -> list[Threat]:
        """Periodically (every fraction of the grace period): episodes that lasted longer
        than the grace period become threat events; the ones that ended are forgotten.
        `tracked(source)` is the source's current number of tracked connections;
        `half_open_over` are sources with more half-open connections than the SYN threshold."""
        grace = self.settings.detection_grace
        for src in half_open_over:
            _touch(self._floods, src, now, grace)
        out: list[Threat] = []
        for src, ep in list(self._floods.items()):
            if now - ep.last > grace:
                del self._floods[src]
            elif ep.last - ep.since >= grace:  # still flooding a grace period after it began
                del self._floods[src]
                self.stats.syn_floods += 1
                detail = (
                    f"new connection attempts over {self.settings.syn_flood_threshold} SYNs/s "
                    f"for {now - ep.since:.1f}s ({ep.hits} kernel drops reported)"
                )
                out.append(Threat(SYN_FLOOD, src, Severity.HIGH, detail))
        limit = self.settings.max_connections_per_ip
        for src, ep in list(self._limits.items()):
            if now - ep.since < grace:
                continue
            del self._limits[src]
            count = tracked(src)
            if now - ep.last <= grace or (limit and count >= limit):
                self.stats.conntrack_limits += 1
                detail = (
                    f"refused beyond {limit} concurrent connections "
                    f"({ep.hits} refusals reported, {count} tracked now)"
                )
                out.append(Threat(CONNTRACK_LIMIT, src, Severity.MEDIUM, detail))
        return out

    def sample(self, now: float, per_second: float = 10.0) -> bool:
        """Whether this denial goes into the audit log (a token bucket, burst 2 s' worth)."""
        burst = 2 * per_second
        self._sample_tokens = min(burst, self._sample_tokens + (now - self._sample_at) * per_second)
        self._sample_at = now
        if self._sample_tokens < 1:
            return False
        self._sample_tokens -= 1
        self.stats.sampled += 1
        return True

    def following(self) -> dict[str, int]:
        return {
            "scan_sources": len(self._ports),
            "flooding_sources": len(self._floods),
            "limited_sources": len(self._limits),
        }


def _touch(
    episodes: OrderedDict[IPAddress, _Episode], src: IPAddress, now: float, grace: float
) -> None:
    ep = episodes.get(src)
    if ep is None or now - ep.last > grace:
        episodes[src] = _Episode(now, now, 1)
        episodes.move_to_end(src)
        _bound(episodes)
        return
    ep.last = now
    ep.hits += 1


def _bound(d: OrderedDict[IPAddress, Any]) -> None:
    while len(d) > MAX_SOURCES:
        d.popitem(last=False)
