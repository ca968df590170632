"""Conntrack accounting over ctnetlink: NEW/DESTROY events and full dumps (layer L2).

Owns: a non-blocking NETLINK_NETFILTER socket subscribed to the conntrack NEW and DESTROY
groups, the full-table dump (IPCTNL_MSG_CT_GET with NLM_F_DUMP, all families), and a lean
decoder of exactly three attributes per message — the original source address, CTA_ID and
the TCP state — applied straight into a `CtTable`.

Why not pyroute2 here (it stays the owner of netlink in adapters/conntrack.py, for the
anti-lockout query and conntrack deletes): its generic decoder takes ~18 s for a
100,000-entry dump and its event listener loses ~17% of events at 20,000 new flows/s
(ANCHORS.md); this decoder reads fixed offsets with `struct` and skips every other
attribute (tests/unit/test_ctnetlink.py checks it against byte fixtures of kernel messages).
Event loss (ENOBUFS) is counted and reported to the caller, who resynchronises with a dump.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from aitherfwd.dynamic.ctcount import CtTable
from aitherfwd.errors import KernelUnavailableError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3
CTA_TUPLE_ORIG = 1
CTA_PROTOINFO = 4
CTA_ID = 12
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC = 1
CTA_IP_V6_SRC = 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
RCVBUF = 16 << 20
SO_RCVBUFFORCE = 33
_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct(">I")


@dataclass
class EventStats:
    events: int = 0
    lost: int = 0  # ENOBUFS reports: the kernel dropped events; a resync follows


def _socket(groups: int) -> socket.socket:
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
    except OSError as exc:
        raise KernelUnavailableError(f"no netfilter netlink socket: {exc}") from exc
    try:
        sock.bind((0, groups))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except OSError as exc:
        sock.close()
        raise KernelUnavailableError(f"cannot subscribe to conntrack events: {exc}") from exc
    return sock


class CtEvents:
    """Conntrack NEW/DESTROY events; `read(table)` when the socket is readable."""

    def __init__(self) -> None:
        groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
        self.sock = _socket(groups)
        self.sock.setblocking(False)
        self.stats = EventStats()

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = 512) -> tuple[list[bytes], bool]:
        """Queued datagrams, undecoded (at most `limit`); False when events were lost."""
        out: list[bytes] = []
        complete = True
        recv = self.sock.recv
        for _ in range(limit):
            try:
                out.append(recv(1 << 16))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.stats.lost += 1
                complete = False
        return out, complete

    def apply(self, datagrams: list[bytes], table: CtTable) -> None:
        for data in datagrams:
            self.stats.events += apply(data, table)

    def read(self, table: CtTable, limit: int = 512) -> bool:
        """Apply queued events (at most `limit` datagrams); False when events were lost."""
        datagrams, complete = self.receive(limit)
        self.apply(datagrams, table)
        return complete

    def close(self) -> None:
        self.sock.close()


def dump() -> CtTable:
    """The whole conntrack table of this network namespace, IPv4 and IPv6, decoded."""
    table = CtTable()
    sock = _socket(0)
    try:
        sock.settimeout(10.0)
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        sock.send(_HDR.pack(16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            data = sock.recv(1 << 20)
            if apply(data, table) < 0:
                return table
    except OSError as exc:
        raise KernelUnavailableError(f"conntrack dump failed: {exc}") from exc
    finally:
        sock.close()


def apply(data: bytes, table: CtTable) -> int:
    """Decode one datagram's messages into `table`; the number applied, -1 at NLMSG_DONE."""
    count = 0
    pos = 0
    end = len(data)
    unpack_hdr = _HDR.unpack_from
    while pos + 16 <= end:
        length, kind, _, _, _ = unpack_hdr(data, pos)
        if length < 16:
            break
        if kind in (NEW, DELETE):
            ct_id, src, state = decode(data, pos + 20, min(pos + length, end))
            if src is not None:
                if kind == DELETE:
                    table.remove(ct_id)
                else:
                    table.add(ct_id, src, state)
                count += 1
        elif kind == NLMSG_DONE:
            return -1
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, pos + 16)
            if code:
                raise OSError(-code, f"ctnetlink error {code}")
        pos += (length + 3) & ~3
    return count


def decode(data: bytes, pos: int, end: int) -> tuple[int, bytes | None, int]:
    """(CTA_ID, original source address as packed bytes, TCP state or 0) of one message."""
    unpack = _ATTR.unpack_from
    src: bytes | None = None
    ct_id = 0
    state = 0
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4 or pos + alen > end:
            return ct_id, None, state
        atype &= 0x3FFF
        if atype == CTA_TUPLE_ORIG:
            # fast path: the kernel puts CTA_TUPLE_IP first and the source address first in it
            ilen, itype = unpack(data, pos + 8)
            if (
                itype & 0x3FFF in (CTA_IP_V4_SRC, CTA_IP_V6_SRC)
                and unpack(data, pos + 4)[1] & 0x3FFF == CTA_TUPLE_IP
                and pos + 8 + ilen <= end
            ):
                src = data[pos + 12 : pos + 8 + ilen]
            else:
                src = _source(data, pos + 4, pos + alen)
        elif atype == CTA_ID:
            (ct_id,) = _U32.unpack_from(data, pos + 4)
        elif atype == CTA_PROTOINFO:
            state = _tcp_state(data, pos + 4, pos + alen)
        pos += (alen + 3) & ~3
    return ct_id, src, state


def _source(data: bytes, pos: int, end: int) -> bytes | None:
    ip = _first(data, pos, end, (CTA_TUPLE_IP,))  # the first attribute in practice
    return None if ip is None else _first(ip, 0, len(ip), (CTA_IP_V4_SRC, CTA_IP_V6_SRC))


def _first(data: bytes, pos: int, end: int, types: tuple[int, ...]) -> bytes | None:
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            return None
        if atype & 0x3FFF in types:
            return data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return None


def _tcp_state(data: bytes, pos: int, end: int) -> int:
    tcp = _first(data, pos, end, (CTA_PROTOINFO_TCP,))
    if tcp is None:
        return 0
    st = _first(tcp, 0, len(tcp), (CTA_PROTOINFO_TCP_STATE,))
    return st[0] if st else 0
