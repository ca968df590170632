"""The nftables ruleset generation of this network namespace (layer L2).

Owns: one NFT_MSG_GETGEN netlink request. The kernel bumps the generation on every
committed transaction in the namespace, so the daemon can tell "nothing changed since our
last transaction" in microseconds instead of listing a table whose sets may hold a million
elements (such a listing costs close to a second). libnftables does not expose it and
pyroute2's import costs ~25 MB, so the 20-byte request and the one u32 attribute of the
answer go through our own codec (adapters/netlink.py).
"""

from __future__ import annotations

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc

NFTA_GEN_ID = 1
WHAT = "NFT_MSG_GETGEN"


def request(seq: int = 1) -> bytes:
    return nl.message(
        nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, nl.NFT_MSG_GETGEN), nl.NLM_F_REQUEST, seq
    )


def current() -> int:
    """Raises OSError (netlink.NetlinkError) when netlink is unavailable."""
    with nlc.Channel(timeout=2.0) as channel:
        return generation(channel.request(request(channel.next_seq()), WHAT))


def parse(data: bytes) -> int:
    """The generation id in one answer datagram; an error answer raises NetlinkError."""
    return generation(list(nl.messages(data)))


def generation(replies: list[nl.Message]) -> int:
    for msg in replies:
        nl.check(msg, WHAT)
        for kind, payload in msg.attrs():
            if kind == NFTA_GEN_ID:
                return nl.u32(payload)
    raise nl.malformed(f"{WHAT} answer without a generation id")
