"""NFLOG reader: the kernel's reports of denied packets, over netlink (layer L2).

Owns: a NETLINK_NETFILTER socket bound to one NFLOG group (the compiler logs denied new
connections, connection-limit refusals and SYN-flood drops to `names.DETECT_GROUP`), its
configuration (copy the first bytes of each packet) and the decoding of NFULNL packet
messages into `Denial`s: source address, IP protocol, destination port, kind and rule (from
the log prefix `afwd <kind> <rule>`).

Why a hand decoder: pyroute2 0.9.x has no NFLOG support at all, and its generic netlink
decoding is far too slow on hot paths (ANCHORS.md: ~5,000 messages/s); here only two
attributes (prefix, payload) of each message are read, with `struct` at fixed offsets.
Non-blocking: the daemon calls `read()` when the socket is readable. Lost messages
(ENOBUFS: the socket buffer overflowed) are counted, never fatal.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from aitherfwd.dynamic.detect import Denial
from aitherfwd.errors import KernelUnavailableError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 3
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
COPY_RANGE = 80  # IPv6 header (40) + the transport ports, with room for IPv4 options
RCVBUF = 4 << 20
_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")
_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET


@dataclass
class NflogStats:
    messages: int = 0
    lost: int = 0  # ENOBUFS: messages the kernel could not queue to us
    undecodable: int = 0


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def config_message(group: int, seq: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _HDR.pack(16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class NflogReader:
    def __init__(self, group: int) -> None:
        self.group = group
        self.stats = NflogStats()
        try:
            self.sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
            )
        except OSError as exc:
            raise KernelUnavailableError(f"no netfilter netlink socket: {exc}") from exc
        try:
            self.sock.bind((0, 0))
            _big_buffer(self.sock)
            self.sock.settimeout(2.0)
            self._request(1, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            mode = struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)
            # batch up to 64 packets or 10 ms: few wake-ups under load, low latency when idle
            self._request(
                2,
                _attr(NFULA_CFG_MODE, mode)
                + _attr(NFULA_CFG_TIMEOUT, struct.pack(">I", 1))
                + _attr(NFULA_CFG_QTHRESH, struct.pack(">I", 64)),
            )
            self.sock.setblocking(False)
        except OSError as exc:
            self.sock.close()
            raise KernelUnavailableError(
                f"cannot bind NFLOG group {group} (another logger, e.g. ulogd, may hold it): {exc}"
            ) from exc

    def _request(self, seq: int, attrs: bytes) -> None:
        self.sock.send(config_message(self.group, seq, attrs))
        data = self.sock.recv(65536)
        _, kind, _, _, _ = _HDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, 16)
            if code:
                raise OSError(-code, os.strerror(-code))

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 256) -> list[Denial]:
        """Everything queued now (at most `limit` datagrams, so the loop stays responsive)."""
        out: list[Denial] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(1 << 17)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.stats.lost += 1
                    continue
                raise
            self.stats.messages += decode_into(data, out, self.stats)
        return out

    def close(self) -> None:
        self.sock.close()


def _big_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def decode_into(data: bytes, out: list[Denial], stats: NflogStats) -> int:
    """Decode every NFULNL packet message of one datagram into `out`; returns how many."""
    count = 0
    pos = 0
    end = len(data)
    while pos + 20 <= end:
        length, kind, _, _, _ = _HDR.unpack_from(data, pos)
        if length < 16:
            break
        if kind == _PACKET_TYPE:
            count += 1
            d = decode_packet(data, pos, min(pos + length, end))
            if d is None:
                stats.undecodable += 1
            else:
                out.append(d)
        pos += (length + 3) & ~3
    return count


def decode_packet(data: bytes, start: int, end: int) -> Denial | None:
    family = data[start + 16]
    prefix = payload = None
    pos = start + 20
    while pos + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            return None
        atype &= 0x3FFF
        if atype == NFULA_PREFIX:
            prefix = data[pos + 4 : pos + alen].rstrip(b"\0").decode("ascii", "replace")
        elif atype == NFULA_PAYLOAD:
            payload = data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    if prefix is None or payload is None:
        return None
    parts = prefix.split()
    if len(parts) != 3 or parts[0] != "afwd":
        return None
    return _denial(family, payload, parts[1], parts[2])


def _denial(family: int, p: bytes, kind: str, rule: str) -> Denial | None:
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == socket.AF_INET and len(p) >= 20:
        ihl = (p[0] & 0x0F) * 4
        proto = p[9]
        src, dst = ipaddress.IPv4Address(p[12:16]), ipaddress.IPv4Address(p[16:20])
        transport = ihl
    elif family == socket.AF_INET6 and len(p) >= 40:
        proto = p[6]
        src, dst = ipaddress.IPv6Address(p[8:24]), ipaddress.IPv6Address(p[24:40])
        transport = 40
    else:
        return None
    port = 0
    if proto in (6, 17, 132, 136) and len(p) >= transport + 4:  # tcp udp sctp udplite
        (port,) = struct.unpack_from(">H", p, transport + 2)
    return Denial(src, proto, port, kind, rule, dst)
