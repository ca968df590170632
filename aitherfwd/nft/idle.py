"""`settings.connection_idle_timeout` as a conntrack timeout policy (layer L1, pure).

Owns: the `ct timeout` objects of table `inet aitherfwd` (one per address family: a
timeout object has one layer-3 protocol) and the two base chains that attach them to TCP
connections: `idle_in` at prerouting and `idle_out` at output, priority -150, because the
kernel attaches a timeout only to a connection conntrack has made (-200) and not yet
confirmed (the input chain is too late for what the host itself opens). An established TCP
connection idle that long is forgotten by conntrack (its next packet is judged as new).

Objects are named with their value (`idle_tcp_v4_300`): the kernel cannot change one in
place, so a changed value starts a new object and the rules move to it. The old object
stays in the table, unused, until `aitherfwd remove`: libnftables 1.0.6 aborts the process
on a JSON `delete ct timeout` (an assertion in cmd_evaluate_delete), so the reconciler
never sends one. Not set (the default): nothing is emitted, the kernel's timeout (5 days)
applies.
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


CHAINS = {"idle_in": "prerouting", "idle_out": "output"}
PRIORITY = -150  # after conntrack (-200) made the entry, before it is confirmed


def chains(seconds: int | None) -> list[Json]:
    """Base chains before conntrack, in and out, that attach the timeout to TCP."""
    if seconds is None:
        return []
    return [b.chain(c, hook=hook, prio=PRIORITY) for c, hook in CHAINS.items()]


def attach(seconds: int | None) -> list[tuple[str, list[Json]]]:
    """(chain, expressions) of the rules attaching the timeout, one per chain and family."""
    if seconds is None:
        return []
    return [
        (
            chain,
            [
                b.match(b.meta("nfproto"), "ipv4" if fam == 4 else "ipv6"),
                b.match(b.meta("l4proto"), "tcp"),
                {KIND: name(fam, seconds)},
            ],
        )
        for chain in CHAINS
        for fam in (4, 6)
    ]


def is_add(command: Json) -> bool:
    """An `add` of one of our timeout objects."""
    return KIND in command.get("add", {})


def add_text(command: Json) -> str:
    """The nft text of an `add ct timeout` command. libnftables 1.0.6 reads a JSON `ct
    timeout` object without its policy (and crashes on some spellings), so the adapter
    creates these objects with this text, built only from a name this module made and
    integers — never from policy text."""
    body = command["add"][KIND]
    name_, l3, seconds = body["name"], body["l3proto"], body["policy"]["established"]
    if not (
        isinstance(name_, str)
        and name_.startswith(PREFIX)
        and name_.replace("_", "").isalnum()
        and l3 in ("ip", "ip6")
        and type(seconds) is int
    ):
        raise ValueError(f"not a timeout object of ours: {body!r:.200}")
    return (
        f"add ct timeout {FAMILY} {TABLE} {name_} "
        f"{{ protocol tcp; l3proto {l3}; policy = {{ established: {seconds} }}; }}"
    )
