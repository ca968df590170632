"""`settings.connection_idle_timeout` as a conntrack timeout policy (layer L1, pure).

Owns: the `ct timeout` objects of table `inet aitherfwd` (one per address family: a
timeout object has one layer-3 protocol) and the input-chain rules that attach them to
new TCP connections, so an established TCP connection that stays idle that long is
forgotten by conntrack (and its next packet is judged as new). Named with their value
(`idle_tcp_v4_300`): the kernel cannot change a timeout object in place, so a changed
value starts a new object and its rules move to it. The old object stays in the table,
unused, until `aitherfwd remove`: libnftables 1.0.6 aborts the process on a JSON `delete ct
timeout` (an assertion in cmd_evaluate_delete), so the reconciler never sends one. Not set
(the default): nothing is emitted and the kernel's own timeout (5 days) applies.
"""

from __future__ import annotations

from aitherfwd.nft import builders as b
from aitherfwd.nft.names import FAMILY, TABLE

Json = b.Json
KIND = "ct timeout"
PREFIX = "idle_tcp_"


def name(family: int, seconds: int) -> str:
    return f"{PREFIX}v{family}_{seconds}"


def objects(seconds: int | None) -> list[Json]:
    if seconds is None:
        return []
    return [
        {
            KIND: {
                "family": FAMILY,
                "table": TABLE,
                "name": name(fam, seconds),
                "protocol": "tcp",
                "l3proto": "ip" if fam == 4 else "ip6",
                "policy": {"established": seconds},
            }
        }
        for fam in (4, 6)
    ]


def attach(seconds: int | None) -> list[list[Json]]:
    """The expressions of one input rule per family (before any verdict on new packets)."""
    if seconds is None:
        return []
    return [
        [
            b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6"),
            b.match(b.meta("l4proto"), "tcp"),
            b.match(b.ct("state"), ["new"], "in"),
            {KIND: name(fam, seconds)},
        ]
        for fam in (4, 6)
    ]
