"""NFLOG reader: the kernel's reports of denied packets, over netlink (layer L2).

Owns: a NETLINK_NETFILTER socket bound to one NFLOG group (the compiler logs denied new
connections, connection-limit refusals and SYN-flood drops to `names.DETECT_GROUP`), its
configuration (copy the first bytes of each packet) and the decoding of NFULNL packet
messages into `Denial`s: source address, IP protocol, destination port, kind and rule (from
the log prefix `afwd <kind> <rule>`), and whether the forward hook reported it (the packet
header's hook number: routed traffic, to or from containers).

Why a hand decoder: pyroute2 0.9.x has no NFLOG support at all, and its generic netlink
decoding is far too slow on hot paths (ANCHORS.md: ~5,000 messages/s); here only two
attributes (prefix, payload) of each message are read, through the codec
(adapters/netlink.py).
Non-blocking: the daemon calls `read()` when the socket is readable. Lost messages
(ENOBUFS: the socket buffer overflowed) are counted, never fatal.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.dynamic.detect import Denial
from aitherfwd.errors import KernelUnavailableError

NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_PACKET_HDR = 1  # struct nfulnl_msg_packet_hdr: be16 hw_protocol, u8 hook, u8 pad
NF_INET_FORWARD = 2
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 3
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
COPY_RANGE = 80  # IPv6 header (40) + the transport ports, with room for IPv4 options
RCVBUF = 4 << 20
_PACKET_TYPE = nl.nfnl_type(nl.NFNL_SUBSYS_ULOG, NFULNL_MSG_PACKET)
_CONFIG_TYPE = nl.nfnl_type(nl.NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG)


@dataclass
class NflogStats:
    messages: int = 0
    lost: int = 0  # ENOBUFS: messages the kernel could not queue to us
    undecodable: int = 0


def config_message(group: int, seq: int, attrs: bytes) -> bytes:
    flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK
    return nl.message(_CONFIG_TYPE, flags, seq, attrs, res_id=group)


class NflogReader:
    def __init__(self, group: int) -> None:
        self.group = group
        self.stats = NflogStats()
        try:
            self.channel = nlc.Channel(rcvbuf=RCVBUF, timeout=2.0)
        except OSError as exc:
            raise KernelUnavailableError(f"no netfilter netlink socket: {exc}") from exc
        self.sock = self.channel.sock
        try:
            self._request(nl.attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            mode = struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)
            # batch up to 64 packets or 10 ms: few wake-ups under load, low latency when idle
            self._request(
                nl.attr(NFULA_CFG_MODE, mode)
                + nl.attr_u32(NFULA_CFG_TIMEOUT, 1)
                + nl.attr_u32(NFULA_CFG_QTHRESH, 64)
            )
            self.sock.setblocking(False)
        except OSError as exc:
            self.channel.close()
            raise KernelUnavailableError(
                f"cannot bind NFLOG group {group} (another logger, e.g. ulogd, may hold it): {exc}"
            ) from exc

    def _request(self, attrs: bytes) -> None:
        msg = config_message(self.group, self.channel.next_seq(), attrs)
        self.channel.request(msg, "NFLOG configuration")

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
        self.channel.close()


def decode_into(data: bytes, out: list[Denial], stats: NflogStats) -> int:
    """Decode every NFULNL packet message of one datagram into `out`; returns how many."""
    count = 0
    try:
        for msg in nl.messages(data):
            if msg.type == _PACKET_TYPE:
                count += 1
                d = decode_packet(msg)
                if d is None:
                    stats.undecodable += 1
                else:
                    out.append(d)
    except nl.NetlinkError:  # a truncated message ends the datagram
        stats.undecodable += 1
    return count


def decode_packet(msg: nl.Message) -> Denial | None:
    prefix = payload = None
    hook = -1
    try:
        family = msg.family
        for kind, value in msg.attrs():
            if kind == NFULA_PACKET_HDR and len(value) >= 3:
                hook = value[2]
            elif kind == NFULA_PREFIX:
                prefix = value.rstrip(b"\0").decode("ascii", "replace")
            elif kind == NFULA_PAYLOAD:
                payload = value
    except nl.NetlinkError:
        return None
    if prefix is None or payload is None:
        return None
    parts = prefix.split()
    if len(parts) != 3 or parts[0] != "afwd":
        return None
    return _denial(family, payload, parts[1], parts[2], forward=hook == NF_INET_FORWARD)


def _denial(family: int, p: bytes, kind: str, rule: str, *, forward: bool) -> Denial | None:
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
    sport = port = 0
    if proto in (6, 17, 132, 136) and len(p) >= transport + 4:  # tcp udp sctp udplite
        sport, port = struct.unpack_from(">HH", p, transport)
    return Denial(src, proto, port, kind, rule, dst, sport, forward)
