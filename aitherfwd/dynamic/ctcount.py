"""Per-source conntrack accounting (layer L1, pure, no I/O).

Owns: `CtTable`, the daemon's picture of the kernel's connection tracking table: each
tracked connection's id → its original source address (packed bytes, shared per source),
per-source counts of tracked connections, and per-source counts of half-open ones: TCP
connections whose last known state is SYN_SENT, SYN_RECV or SYN_SENT2 (the handshake has
not completed). Conntrack NEW/UPDATE/DESTROY events keep both current between dumps: a NEW
(state SYN_SENT) counts as half-open, the UPDATE that carries the next state (ESTABLISHED,
or CLOSE after a reset) takes it out again, a DESTROY removes the connection. Ids make events
idempotent: a NEW for a known id or a DESTROY for an unknown one changes nothing; a message
for a known id only updates its TCP state (messages without one change nothing).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from aitherfwd.policy.model import IPAddress

# TCP conntrack states (include/uapi/linux/netfilter/nf_conntrack_tcp.h)
TCP_SYN_SENT = 1
TCP_SYN_RECV = 2
TCP_ESTABLISHED = 3
TCP_CLOSE = 7
TCP_SYN_SENT2 = 9
HALF_OPEN = frozenset({TCP_SYN_SENT, TCP_SYN_RECV, TCP_SYN_SENT2})


@dataclass
class CtTable:
    entries: dict[int, bytes] = field(default_factory=dict)
    tracked: dict[bytes, int] = field(default_factory=dict)
    half_open: dict[bytes, int] = field(default_factory=dict)
    _half_ids: set[int] = field(default_factory=set)
    _sources: dict[bytes, bytes] = field(default_factory=dict)  # one bytes object per source

    def add(self, ct_id: int, source: bytes, tcp_state: int = 0) -> None:
        """A NEW event, an UPDATE event or a dumped entry (whichever comes first adds)."""
        known = self.entries.get(ct_id)
        if known is not None:
            if tcp_state:
                self._state(ct_id, known, tcp_state in HALF_OPEN)
            return
        src = self._sources.setdefault(source, source)
        self.entries[ct_id] = src
        self.tracked[src] = self.tracked.get(src, 0) + 1
        if tcp_state in HALF_OPEN:
            self._half_ids.add(ct_id)
            self.half_open[src] = self.half_open.get(src, 0) + 1

    def _state(self, ct_id: int, src: bytes, half_open: bool) -> None:
        if half_open == (ct_id in self._half_ids):
            return
        if half_open:
            self._half_ids.add(ct_id)
            self.half_open[src] = self.half_open.get(src, 0) + 1
            return
        self._half_ids.discard(ct_id)
        half = self.half_open[src] - 1
        if half:
            self.half_open[src] = half
        else:
            del self.half_open[src]

    def remove(self, ct_id: int) -> None:
        src = self.entries.pop(ct_id, None)
        if src is None:
            return
        self._state(ct_id, src, False)
        left = self.tracked[src] - 1
        if left:
            self.tracked[src] = left
        else:
            del self.tracked[src]
            del self._sources[src]

    def __len__(self) -> int:
        return len(self.entries)

    def count(self, address: IPAddress) -> int:
        return self.tracked.get(address.packed, 0)

    def max_per_source(self) -> int:
        return max(self.tracked.values(), default=0)

    def half_open_over(self, threshold: int) -> list[IPAddress]:
        if threshold <= 0:
            return []
        return [ipaddress.ip_address(s) for s, c in self.half_open.items() if c > threshold]

    def top(self, k: int = 5) -> list[tuple[str, int]]:
        best = sorted(self.tracked.items(), key=lambda kv: -kv[1])[:k]
        return [(str(ipaddress.ip_address(s)), c) for s, c in best]
