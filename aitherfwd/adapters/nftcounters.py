"""Named counters of our table, read straight from netlink (layer L2).

Owns: one NFT_MSG_GETOBJ dump request, filtered by the kernel to the counters of table
`inet aitherfwd`, and decoding the few attributes of its answers (name, packets, bytes).

Why not libnftables: `list counters table inet aitherfwd` makes libnftables fill its full
cache first, set elements included. Measured with nftables 1.0.6 in a namespace holding a
1,000,000-element block set and 200 counters: 36 s and ~600 MB in the lister, against 0.8 ms
with an empty set (docs/benchmarks-metrics.md). This dump never touches sets: the kernel
answers it from its object list alone, so its cost follows the number of counters. Nothing
here writes; pyroute2 would add ~25 MB to the daemon for a 20-line request.
"""

from __future__ import annotations

import socket
import struct

from aitherfwd.nft import names as n

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETOBJ = 19
NFT_MSG_NEWOBJ = 18
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
HEADER = 20  # nlmsghdr (16) + nfgenmsg (4)

Counters = dict[str, tuple[int, int]]  # counter name -> (packets, bytes)


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def request(table: str = n.TABLE, seq: int = 1) -> bytes:
    """The dump request: counters of one table of family inet."""
    attrs = _attr(NFTA_OBJ_TABLE, table.encode() + b"\0") + _attr(
        NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER)
    )
    msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ
    head = struct.pack("=IHHII", HEADER + len(attrs), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return head + struct.pack("=BBH", NFPROTO_INET, 0, 0) + attrs


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = start
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def parse(data: bytes, table: str, into: Counters) -> bool:
    """Decode one datagram of the dump into `into`; True once the dump is complete.
    Raises OSError for a netlink error answer."""
    offset = 0
    wanted = table.encode() + b"\0"
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if msg_type == NLMSG_DONE:
            return True
        if msg_type == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, offset + 16)
            if err:
                raise OSError(-err, "NFT_MSG_GETOBJ dump failed")
            return True
        if msg_type & 0xFF == NFT_MSG_NEWOBJ:
            top = _attrs(data, offset + HEADER, offset + length)
            body = top.get(NFTA_OBJ_DATA)
            if top.get(NFTA_OBJ_TABLE) == wanted and NFTA_OBJ_NAME in top and body is not None:
                inner = _attrs(body, 0, len(body))
                (packets,) = struct.unpack("!Q", inner.get(NFTA_COUNTER_PACKETS, bytes(8)))
                (nbytes,) = struct.unpack("!Q", inner.get(NFTA_COUNTER_BYTES, bytes(8)))
                into[top[NFTA_OBJ_NAME].rstrip(b"\0").decode()] = (packets, nbytes)
        offset += (length + 3) & ~3
    return False


def read(table: str = n.TABLE, timeout: float = 2.0) -> Counters:
    """Every named counter of `inet <table>`: {} when the table does not exist. Raises
    OSError when netlink is unavailable."""
    out: Counters = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.send(request(table))
        try:
            while not parse(sock.recv(1 << 16), table, out):
                pass
        except FileNotFoundError:  # ENOENT: no such table
            return {}
    return out
