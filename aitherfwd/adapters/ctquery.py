"""Kernel-filtered conntrack queries and deletes over ctnetlink (layer L2).

Owns: the encoding of the two filtered dumps the daemon asks for — by original source
address (the conntrack cut after a ban) and by protocol TCP + destination port (the
anti-lockout's live admin sessions) — with CTA_FILTER (Linux ≥ 5.8: the kernel matches
the entries, so the cost follows the answer, not the size of the conntrack table); the
decoding of the entries they return (`Entry`: source, protocol, destination port, TCP
state, and the raw attributes that name the entry); and the delete of those entries as
one burst of IPCTNL_MSG_CT_DELETE messages with every ack collected.

A delete carries the entry's own CTA_TUPLE_ORIG attribute copied verbatim from the dump
(plus its CTA_ZONE and CTA_ID when present: the kernel then deletes exactly the entry it
showed, and answers ENOENT when that one went away meanwhile — not an error here).
Every entry a dump returns is also checked against the filter here, so a kernel that
ignores CTA_FILTER (or gets it wrong) can never make a cut delete another source's
connections. It does get it wrong for IPv6 addresses: ctnetlink_filter_match_tuple()
tests `!ipv6_addr_cmp(filter, entry)` and skips the entry when the addresses are EQUAL,
so an IPv6 CTA_IP_SRC filter returns every source but the one asked for (Linux 5.8 to at
least 6.18, seen in tests/kernel/test_conntrack_cut.py's namespace; IPv4 compares
correctly). The IPv6 cut therefore dumps the family's table (the kernel filters by
family correctly) and matches the source here: its cost follows the IPv6 conntrack table.

Sockets: one `Channel` per calling thread (`Conn`), reused between calls, closed and
forgotten on any error. Errors are `NetlinkError` (an OSError, with the kernel's errno);
adapters/conntrack.py turns them into `ConntrackError` for the daemon.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.adapters.ctnetlink import (
    CTA_ID,
    CTA_IP_V4_SRC,
    CTA_IP_V6_SRC,
    CTA_PROTO_NUM,
    CTA_PROTOINFO,
    CTA_PROTOINFO_TCP,
    CTA_PROTOINFO_TCP_STATE,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
)

CTA_ZONE = 18
CTA_FILTER = 25
CTA_FILTER_ORIG_FLAGS = 1
CTA_PROTO_DST_PORT = 3
# CTA_FILTER_FLAG(...) of net/netfilter/nf_internals.h (not exported in the uapi headers)
FILTER_IP_SRC = 1 << 0
FILTER_PROTO_NUM = 1 << 3
FILTER_PROTO_DST_PORT = 1 << 5
TCP_CONNTRACK_ESTABLISHED = 3
GET = nl.nfnl_type(nl.NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET)
DELETE = nl.nfnl_type(nl.NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE)
TIMEOUT = 5.0  # seconds for one dump or one burst of deletes, all answers included
BURST = 64  # deletes per send: their acks (an ENOENT echoes the request) fit the rcvbuf
_PORT = struct.Struct("!H")
_HOST_U32 = struct.Struct("=I")
T = TypeVar("T")


class Entry(NamedTuple):
    """One conntrack entry of a dump: what the queries match on, and the raw attributes
    (header included) that name it in a delete."""

    family: int
    source: bytes  # packed original source address
    proto: int
    dport: int  # original destination port, 0 when the protocol has none
    state: int  # TCP state, 0 when absent
    tuple_orig: bytes  # the CTA_TUPLE_ORIG attribute, verbatim
    extra: bytes  # CTA_ZONE and CTA_ID attributes, verbatim, when present


# --- encoding -----------------------------------------------------------------------------


def family_of(packed: bytes) -> int:
    if len(packed) == 4:
        return socket.AF_INET
    if len(packed) == 16:
        return socket.AF_INET6
    raise ValueError(f"not a packed IPv4 or IPv6 address: {len(packed)} bytes")


def _filter(flags: int) -> bytes:
    # NLA_U32 in host byte order (the kernel reads it with nla_get_u32), unlike the
    # big-endian values of the conntrack tuple
    return nl.nested(CTA_FILTER, nl.attr(CTA_FILTER_ORIG_FLAGS, _HOST_U32.pack(flags)))


def by_source(packed: bytes, seq: int, *, in_kernel: bool | None = None) -> bytes:
    """A dump of the entries whose original source is `packed`: filtered by the kernel for
    IPv4; for IPv6 (by default) a dump of the family's table, matched here — see the
    module's docstring for the kernel's inverted IPv6 address match."""
    family = family_of(packed)
    flags = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    if not (family == socket.AF_INET if in_kernel is None else in_kernel):
        return nl.message(GET, flags, seq, family=family)  # the kernel keeps the family
    kind = CTA_IP_V4_SRC if family == socket.AF_INET else CTA_IP_V6_SRC
    orig = nl.nested(CTA_TUPLE_ORIG, nl.nested(CTA_TUPLE_IP, nl.attr(kind, packed)))
    return nl.message(GET, flags, seq, orig + _filter(FILTER_IP_SRC), family=family)


def by_tcp_port(family: int, port: int, seq: int, *, filter_flags: int | None = None) -> bytes:
    """A dump of the TCP entries of `family` whose original destination port is `port`.
    (`filter_flags` replaces the filter's flags: the tests send ones the kernel refuses.)"""
    proto = nl.nested(
        CTA_TUPLE_PROTO,
        nl.attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP])),
        nl.attr(CTA_PROTO_DST_PORT, _PORT.pack(port)),
    )
    flags = FILTER_PROTO_NUM | FILTER_PROTO_DST_PORT if filter_flags is None else filter_flags
    orig = nl.nested(CTA_TUPLE_ORIG, proto)
    request = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    return nl.message(GET, request, seq, orig + _filter(flags), family=family)


def delete(entry: Entry, seq: int) -> bytes:
    """The delete of exactly `entry` (acked)."""
    flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK
    return nl.message(DELETE, flags, seq, entry.tuple_orig + entry.extra, family=entry.family)


# --- decoding -----------------------------------------------------------------------------


def decode(msg: nl.Message) -> Entry | None:
    """The entry of one dump message; None for a message without an original tuple of an
    IP address and a protocol (never one of ours to match or delete)."""
    data = msg.data
    family = msg.family
    tuple_orig = b""
    extra: list[bytes] = []
    source = b""
    proto = dport = state = -1
    for kind, pos, stop in nl.spans(data, msg.start + nl.NFNL_HEADER, msg.end):
        if kind == CTA_TUPLE_ORIG:
            tuple_orig = _padded(data[pos:stop])
            source, proto, dport = _tuple(data, pos + 4, stop)
        elif kind in (CTA_ZONE, CTA_ID):
            extra.append(_padded(data[pos:stop]))
        elif kind == CTA_PROTOINFO:
            state = _tcp_state(data, pos + 4, stop)
    if not source or proto < 0:
        return None
    return Entry(family, source, proto, max(dport, 0), max(state, 0), tuple_orig, b"".join(extra))


def _padded(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def _tuple(data: bytes, start: int, end: int) -> tuple[bytes, int, int]:
    source, proto, dport = b"", -1, -1
    for kind, value in nl.attributes(data, start, end):
        if kind == CTA_TUPLE_IP:
            for ip_kind, address in nl.attributes(value):
                if ip_kind in (CTA_IP_V4_SRC, CTA_IP_V6_SRC) and len(address) in (4, 16):
                    source = address
        elif kind == CTA_TUPLE_PROTO:
            for l4_kind, field in nl.attributes(value):
                if l4_kind == CTA_PROTO_NUM and len(field) == 1:
                    proto = field[0]
                elif l4_kind == CTA_PROTO_DST_PORT and len(field) == 2:
                    dport = _PORT.unpack(field)[0]
    return source, proto, dport


def _tcp_state(data: bytes, start: int, end: int) -> int:
    for kind, value in nl.attributes(data, start, end):
        if kind == CTA_PROTOINFO_TCP:
            for tcp_kind, field in nl.attributes(value):
                if tcp_kind == CTA_PROTOINFO_TCP_STATE and len(field) == 1:
                    return field[0]
    return -1


def entries(replies: Iterable[nl.Message], keep: Callable[[Entry], bool]) -> list[Entry]:
    """The decoded entries of a dump's replies that `keep` accepts."""
    out = []
    for msg in replies:
        entry = decode(msg)
        if entry is not None and keep(entry):
            out.append(entry)
    return out


def dump(channel: nlc.Channel, request: bytes, keep: Callable[[Entry], bool]) -> list[Entry]:
    """Send a dump request and keep the entries `keep` accepts, decoded datagram by
    datagram (an IPv6 table dump may be large: only the kept entries stay in memory)."""
    seq = nl.NLMSGHDR.unpack_from(request)[3]
    channel.send(request)
    out: list[Entry] = []
    for data in channel.datagrams():
        for msg in nl.messages(data):
            if msg.seq != seq:
                continue
            if msg.type == nl.NLMSG_DONE:
                return out
            if msg.type == nl.NLMSG_ERROR:
                nl.check(msg, "ct dump")  # an ack (errno 0) cannot answer a dump
                raise nl.malformed("ct dump: an ack instead of NLMSG_DONE")
            entry = decode(msg)
            if entry is not None and keep(entry):
                out.append(entry)
    raise nl.malformed("ct dump: the answer ended early")


# --- the socket ---------------------------------------------------------------------------


class Conn:
    """One ctnetlink `Channel` per calling thread, opened on first use and reused; any
    error closes it (the next call opens a fresh one), so no half-read answer is ever
    read as the answer to the next request."""

    def __init__(
        self, timeout: float = TIMEOUT, *, opener: Callable[[], nlc.Channel] | None = None
    ) -> None:
        self.open = opener or (lambda: nlc.Channel(timeout=timeout))
        self._local = threading.local()

    def run(self, work: Callable[[nlc.Channel], T]) -> T:
        channel: nlc.Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self.open()
            self._local.channel = channel
        try:
            return work(channel)
        except BaseException:
            self._local.channel = None
            channel.close()
            raise

    def close(self) -> None:
        """Close the calling thread's socket (the others close with their threads)."""
        channel = getattr(self._local, "channel", None)
        self._local.channel = None
        if channel is not None:
            channel.close()


# --- the two operations -------------------------------------------------------------------


def established_peers(channel: nlc.Channel, ports: Iterable[int]) -> set[tuple[bytes, int]]:
    """(packed peer address, local port) of every ESTABLISHED TCP connection to one of
    `ports`, IPv4 and IPv6: one filtered dump per family and port."""
    out: set[tuple[bytes, int]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for port in sorted(set(ports)):
            request = by_tcp_port(family, port, channel.next_seq())
            for e in dump(channel, request, _established_to(port)):
                out.add((e.source, port))
    return out


def _established_to(port: int) -> Callable[[Entry], bool]:
    def keep(e: Entry) -> bool:
        tcp = e.proto == socket.IPPROTO_TCP
        return tcp and e.dport == port and e.state == TCP_CONNTRACK_ESTABLISHED

    return keep


def delete_source(channel: nlc.Channel, packed: bytes) -> int:
    """Delete every entry whose original source is `packed`; how many the kernel deleted
    (entries that went away before their delete are not counted, and not an error)."""
    found = dump(channel, by_source(packed, channel.next_seq()), lambda e: e.source == packed)
    deleted = 0
    for at in range(0, len(found), BURST):
        deleted += _delete_burst(channel, found[at : at + BURST])
    return deleted


def _delete_burst(channel: nlc.Channel, burst: list[Entry]) -> int:
    seqs = [channel.next_seq() for _ in burst]
    channel.send(b"".join(delete(e, seq) for e, seq in zip(burst, seqs, strict=True)))
    wanted = set(seqs)
    deleted = 0
    failure: nl.NetlinkError | None = None
    for data in channel.datagrams():
        for msg in nl.messages(data):
            if msg.type != nl.NLMSG_ERROR or msg.seq not in wanted:
                continue
            wanted.discard(msg.seq)
            code, text = nl.error_code(msg.data, msg.start, msg.end)
            if code == 0:
                deleted += 1
            elif code != errno.ENOENT and failure is None:
                failure = nl.error(code, "ct delete", seq=msg.seq, kernel=text)
        if not wanted:
            break
    if failure is not None:
        raise failure
    return deleted
