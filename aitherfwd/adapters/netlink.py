"""The one netlink codec every netfilter netlink reader and writer shares (layer L2).

Owns: the shared constants (NETLINK_NETFILTER, NLM_F_*, NLMSG_*, NLA_F_*, the nfnetlink
subsystems and batch messages), packing and unpacking of nlmsghdr + nfgenmsg, attribute
packing (nested, aligned) and walking, and the decoding of NLMSG_ERROR (ack or errno, with
the kernel's extended-ack message when it sends one) into `NetlinkError`, and NLMSG_DONE.
Sockets and batches built on it live in adapters/nlchannel.py.

Every malformed or truncated input raises `NetlinkError` (errno EBADMSG), never IndexError
or struct.error. `NetlinkError` is an `OSError`, so callers that already treat netlink
failures as OS errors keep working. Hot decoders (adapters/ctnetlink.py) may read fixed
offsets themselves, but take their constants, headers and error handling from here.
Imports nothing from aitherfwd: it is the bottom of the adapters.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200  # for NEW requests
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300  # for GET requests: NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # for NLMSG_ERROR: the original message is cut to its header
NLM_F_ACK_TLVS = 0x200  # for NLMSG_ERROR: extended-ack attributes follow

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSGERR_ATTR_MSG = 1

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER (0x4000)

NFNETLINK_V0 = 0
NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_ULOG = 4
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 0x11

NFPROTO_UNSPEC = 0
NFPROTO_INET = 1

# nftables messages (subsystem NFNL_SUBSYS_NFTABLES)
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_GETGEN = 16
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19

HEADER = 16  # nlmsghdr
NFNL_HEADER = 20  # nlmsghdr + nfgenmsg
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, stored as is)
_ATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")


class NetlinkError(OSError):
    """A netlink error answer (errno from the kernel), malformed input (EBADMSG) or a
    reply that did not come in time (ETIMEDOUT). `seq` is the request it answers, when
    known; `kernel_message` the kernel's extended-ack text, when it sent one."""

    def __init__(
        self, code: int, message: str, *, seq: int | None = None, kernel: str = ""
    ) -> None:
        super().__init__(code, message)
        self.seq = seq
        self.kernel_message = kernel

    def __str__(self) -> str:
        text = f"[Errno {self.errno}] {self.strerror}"
        return f"{text}: {self.kernel_message}" if self.kernel_message else text


def malformed(what: str) -> NetlinkError:
    return NetlinkError(errno.EBADMSG, f"malformed netlink data: {what}")


# --- encoding -----------------------------------------------------------------------------


def nfnl_type(subsys: int, kind: int) -> int:
    return (subsys << 8) | kind


def align(length: int) -> int:
    return (length + 3) & ~3


def header(length: int, msg_type: int, flags: int, seq: int, pid: int = 0) -> bytes:
    return NLMSGHDR.pack(length, msg_type, flags, seq, pid)


def message(
    msg_type: int,
    flags: int,
    seq: int,
    attrs: bytes = b"",
    *,
    family: int = NFPROTO_UNSPEC,
    res_id: int = 0,
) -> bytes:
    """One nfnetlink message: nlmsghdr + nfgenmsg (res_id in network order) + attributes."""
    body = _NFGENMSG.pack(family, NFNETLINK_V0, socket.htons(res_id)) + attrs
    return header(HEADER + len(body), msg_type, flags, seq) + body


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"netlink attribute {kind} too long ({length} bytes)")
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!I", value))


def attr_u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!Q", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


# --- decoding -----------------------------------------------------------------------------


class Message(NamedTuple):
    """One message of a datagram: its header fields and where it sits in `data`."""

    type: int
    flags: int
    seq: int
    pid: int
    data: bytes
    start: int
    end: int

    @property
    def payload(self) -> bytes:
        return self.data[self.start + HEADER : self.end]

    @property
    def family(self) -> int:
        """The nfgenmsg family of an nfnetlink message."""
        if self.end - self.start < NFNL_HEADER:
            raise malformed("message shorter than nlmsghdr + nfgenmsg")
        return self.data[self.start + HEADER]

    def attrs(self) -> Iterator[tuple[int, bytes]]:
        """The attributes of an nfnetlink message (after nlmsghdr and nfgenmsg)."""
        if self.end - self.start < NFNL_HEADER:
            raise malformed("message shorter than nlmsghdr + nfgenmsg")
        return attributes(self.data, self.start + NFNL_HEADER, self.end)


def messages(data: bytes) -> Iterator[Message]:
    """Every message of one datagram; a header or length that does not fit raises."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < HEADER:
            raise malformed(f"{end - pos} trailing bytes are not a message header")
        length, kind, flags, seq, pid = NLMSGHDR.unpack_from(data, pos)
        if length < HEADER or pos + length > end:
            raise malformed(f"message length {length} at offset {pos} of {end}")
        yield Message(kind, flags, seq, pid, data, pos, pos + length)
        pos += align(length)


def spans(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(type without NLA_F_NESTED/NLA_F_NET_BYTEORDER, header offset, end offset) of each
    attribute in data[start:end], for decoders that remember where attributes sit."""
    stop = len(data) if end is None else min(end, len(data))
    pos = start
    while pos < stop:
        if stop - pos < 4:
            raise malformed(f"{stop - pos} trailing bytes are not an attribute")
        length, kind = _ATTR.unpack_from(data, pos)
        if length < 4 or pos + length > stop:
            raise malformed(f"attribute length {length} at offset {pos} of {stop}")
        yield kind & NLA_TYPE_MASK, pos, pos + length
        pos += align(length)


def attributes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(type without NLA_F_NESTED/NLA_F_NET_BYTEORDER, payload) of each attribute in
    data[start:end]; nested attributes are walked by calling this again on the payload."""
    for kind, pos, stop in spans(data, start, end):
        yield kind, data[pos + 4 : stop]


def attr_map(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes as a dict (the last one wins when a type repeats)."""
    return dict(attributes(data, start, end))


def u32(payload: bytes) -> int:
    if len(payload) < 4:
        raise malformed("u32 attribute shorter than 4 bytes")
    return int.from_bytes(payload[:4], "big")


def u64(payload: bytes) -> int:
    if len(payload) < 8:
        raise malformed("u64 attribute shorter than 8 bytes")
    return int.from_bytes(payload[:8], "big")


def error_code(data: bytes, start: int, end: int | None = None) -> tuple[int, str]:
    """(errno, extended-ack message) of the NLMSG_ERROR message at `start`: 0 is an ack."""
    stop = len(data) if end is None else min(end, len(data))
    if stop - start < HEADER + 4:
        raise malformed("NLMSG_ERROR without an error code")
    flags = struct.unpack_from("=H", data, start + 6)[0]
    (code,) = _ERRNO.unpack_from(data, start + HEADER)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        orig = start + HEADER + 4
        if stop - orig >= HEADER:
            orig_len = HEADER if flags & NLM_F_CAPPED else NLMSGHDR.unpack_from(data, orig)[0]
            for kind, value in attributes(data, orig + align(max(orig_len, HEADER)), stop):
                if kind == NLMSGERR_ATTR_MSG:
                    text = value.rstrip(b"\0").decode("utf-8", "replace")
    return -code, text


def check(msg: Message, what: str = "netlink request") -> None:
    """Raise `NetlinkError` if `msg` is an error answer (an ack, errno 0, passes)."""
    if msg.type != NLMSG_ERROR:
        return
    code, text = error_code(msg.data, msg.start, msg.end)
    if code:
        raise error(code, what, seq=msg.seq, kernel=text)


def error(code: int, what: str, *, seq: int | None = None, kernel: str = "") -> NetlinkError:
    try:
        reason = os.strerror(code)
    except ValueError:
        reason = f"error {code}"
    return NetlinkError(code, f"{what} failed: {reason}", seq=seq, kernel=kernel)
