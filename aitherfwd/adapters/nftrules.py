"""Our table's rules as (chain, comment), read straight from netlink (layer L2).

Owns: one NFT_MSG_GETRULE dump request, filtered by the kernel to table `inet aitherfwd`,
and decoding the two attributes the drift check needs of each answer: the chain and the
comment (the rule's userdata TLV of type NFTNL_UDATA_RULE_COMMENT). Framing, attributes
and errors come from the codec (adapters/netlink.py).

Why not libnftables: `list table` (and `list chain`) fill libnftables' full cache first,
set elements included; with a 300,000-range country set in the namespace that is ~1.8 s
for every listing (docs/benchmarks-geo.md), and the drift check lists every minute, with
the kernel writer busy meanwhile. This dump never touches sets.
"""

from __future__ import annotations

import errno

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.nft import names as n

NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_USERDATA = 7
NFTNL_UDATA_RULE_COMMENT = 0
WHAT = "NFT_MSG_GETRULE dump"

Rules = list[tuple[str, str]]  # (chain, comment) in the kernel's order


def request(table: str = n.TABLE, seq: int = 1) -> bytes:
    attrs = nl.attr_str(NFTA_RULE_TABLE, table)
    msg_type = nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE)
    return nl.message(
        msg_type, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, attrs, family=nl.NFPROTO_INET
    )


def comment(udata: bytes) -> str:
    """The comment in a rule's userdata TLVs (type, length, value), without its NUL."""
    i = 0
    while i + 2 <= len(udata):
        kind, length = udata[i], udata[i + 1]
        value = udata[i + 2 : i + 2 + length]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        i += 2 + length
    return ""


def add(msg: nl.Message, table: str, into: Rules) -> None:
    if msg.type & 0xFF != NFT_MSG_NEWRULE:
        return
    top = nl.attr_map(msg.data, msg.start + nl.NFNL_HEADER, msg.end)
    if top.get(NFTA_RULE_TABLE) != table.encode() + b"\0" or NFTA_RULE_CHAIN not in top:
        return
    chain = top[NFTA_RULE_CHAIN].rstrip(b"\0").decode()
    into.append((chain, comment(top.get(NFTA_RULE_USERDATA, b""))))


def read(table: str = n.TABLE, timeout: float = 5.0) -> Rules:
    """Every rule of `inet <table>`: [] when the table does not exist. Raises OSError
    (netlink.NetlinkError) when netlink is unavailable."""
    out: Rules = []
    with nlc.Channel(rcvbuf=4 << 20, timeout=timeout) as channel:
        try:
            replies = channel.request(request(table, channel.next_seq()), WHAT)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
    for msg in replies:
        add(msg, table, out)
    return out
