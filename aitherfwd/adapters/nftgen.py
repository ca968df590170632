"""The nftables ruleset generation of this network namespace (layer L2).

Owns: one NFT_MSG_GETGEN netlink request. The kernel bumps the generation on every
committed transaction in the namespace, so the daemon can tell "nothing changed since our
last transaction" in microseconds instead of listing a table whose sets may hold a million
elements (such a listing costs close to a second). libnftables does not expose it and
pyroute2's import costs ~25 MB, so the 20-byte request and the one u32 attribute of the
answer are built and read by hand here.
"""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NFTA_GEN_ID = 1


def current() -> int:
    """Raises OSError when netlink is unavailable."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        # nlmsghdr (len, type, flags, seq, pid) + nfgenmsg (family, version, res_id)
        request = struct.pack("=IHHII", 20, msg_type, NLM_F_REQUEST, 1, 0) + struct.pack(
            "=BBH", socket.AF_UNSPEC, 0, 0
        )
        sock.send(request)
        return parse(sock.recv(4096))


def parse(data: bytes) -> int:
    length, msg_type = struct.unpack_from("=IH", data, 0)
    if msg_type == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        raise OSError(-err, "NFT_MSG_GETGEN failed")
    offset, gen_id = 20, None  # past nlmsghdr (16) and nfgenmsg (4)
    while offset + 4 <= min(length, len(data)):
        attr_len, attr_type = struct.unpack_from("=HH", data, offset)
        if attr_len < 4:
            break
        kind = attr_type & 0x3FFF
        if kind == NFTA_GEN_ID:
            (gen_id,) = struct.unpack_from("!I", data, offset + 4)
        offset += (attr_len + 3) & ~3
    if gen_id is None:
        raise OSError("NFT_MSG_GETGEN answer without a generation id")
    return int(gen_id)
