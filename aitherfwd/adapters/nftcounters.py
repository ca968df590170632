"""Named counters of our table, read straight from netlink (layer L2).

Owns: one NFT_MSG_GETOBJ dump request, filtered by the kernel to the counters of table
`inet aitherfwd`, and decoding the few attributes of its answers (name, packets, bytes);
framing, attributes and errors come from the codec (adapters/netlink.py).

Why not libnftables: `list counters table inet aitherfwd` makes libnftables fill its full
cache first, set elements included. Measured with nftables 1.0.6 in a namespace holding a
1,000,000-element block set and 200 counters: 36 s and ~600 MB in the lister, against 0.8 ms
with an empty set (docs/benchmarks-metrics.md). This dump never touches sets: the kernel
answers it from its object list alone, so its cost follows the number of counters. Nothing
here writes; pyroute2 would add ~25 MB to the daemon for a 20-line request.
"""

from __future__ import annotations

import errno

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.nft import names as n

NFT_OBJECT_COUNTER = 1
NFT_OBJECT_CT_TIMEOUT = 7
NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
WHAT = "NFT_MSG_GETOBJ dump"

Counters = dict[str, tuple[int, int]]  # counter name -> (packets, bytes)


def request(table: str = n.TABLE, seq: int = 1, kind: int = NFT_OBJECT_COUNTER) -> bytes:
    """The dump request: objects of one type (counters) of one table of family inet."""
    attrs = nl.attr_str(NFTA_OBJ_TABLE, table) + nl.attr_u32(NFTA_OBJ_TYPE, kind)
    msg_type = nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, nl.NFT_MSG_GETOBJ)
    return nl.message(
        msg_type, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, attrs, family=nl.NFPROTO_INET
    )


def parse(data: bytes, table: str, into: Counters) -> bool:
    """Decode one datagram of the dump into `into`; True once the dump is complete.
    Raises NetlinkError (an OSError) for an error answer or malformed data."""
    for msg in nl.messages(data):
        if msg.type == nl.NLMSG_DONE:
            return True
        if msg.type == nl.NLMSG_ERROR:
            nl.check(msg, WHAT)
            return True
        add(msg, table, into)
    return False


def add(msg: nl.Message, table: str, into: Counters) -> None:
    """One NEWOBJ answer into `into`, when it is a counter of `table`."""
    if msg.type & 0xFF != nl.NFT_MSG_NEWOBJ:
        return
    top = nl.attr_map(msg.data, msg.start + nl.NFNL_HEADER, msg.end)
    body = top.get(NFTA_OBJ_DATA)
    if top.get(NFTA_OBJ_TABLE) != table.encode() + b"\0" or NFTA_OBJ_NAME not in top:
        return
    if body is not None:
        inner = nl.attr_map(body)
        packets = nl.u64(inner.get(NFTA_COUNTER_PACKETS, bytes(8)))
        nbytes = nl.u64(inner.get(NFTA_COUNTER_BYTES, bytes(8)))
        into[top[NFTA_OBJ_NAME].rstrip(b"\0").decode()] = (packets, nbytes)


def read(table: str = n.TABLE, timeout: float = 2.0) -> Counters:
    """Every named counter of `inet <table>`: {} when the table does not exist. Raises
    OSError (netlink.NetlinkError) when netlink is unavailable."""
    out: Counters = {}
    with nlc.Channel(rcvbuf=1 << 20, timeout=timeout) as channel:
        try:
            replies = channel.request(request(table, channel.next_seq()), WHAT)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:  # no such table
                return {}
            raise
    for msg in replies:
        add(msg, table, out)
    return out


def object_names(kind: int, table: str = n.TABLE, timeout: float = 2.0) -> list[str]:
    """Names of the objects of one type (e.g. NFT_OBJECT_CT_TIMEOUT) of `inet <table>`,
    by the same dump; [] when the table does not exist."""
    with nlc.Channel(rcvbuf=1 << 20, timeout=timeout) as channel:
        try:
            replies = channel.request(request(table, channel.next_seq(), kind), WHAT)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
    names = []
    for msg in replies:
        if msg.type & 0xFF != nl.NFT_MSG_NEWOBJ:
            continue
        top = nl.attr_map(msg.data, msg.start + nl.NFNL_HEADER, msg.end)
        if top.get(NFTA_OBJ_TABLE) == table.encode() + b"\0" and NFTA_OBJ_NAME in top:
            names.append(top[NFTA_OBJ_NAME].rstrip(b"\0").decode())
    return sorted(names)
