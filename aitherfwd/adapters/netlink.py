"""The one netlink codec every netfilter netlink reader and writer shares (layer L2).

Owns: the shared constants (NETLINK_NETFILTER, NLM_F_*, NLMSG_*, NLA_F_*, the nfnetlink
subsystems and batch messages), packing and unpacking of nlmsghdr + nfgenmsg, attribute
packing (nested, aligned) and walking, the decoding of NLMSG_ERROR (ack or errno, with the
kernel's extended-ack message when it sends one) into `NetlinkError`, NLMSG_DONE, a small
`Channel` (a NETLINK_NETFILTER socket that sends a request and reads its replies until
DONE or the ack, under a timeout), and nfnetlink batches (BATCH_BEGIN … BATCH_END, every
message acked, `acks()` mapping sequence number → errno) for the element writer.

Every malformed or truncated input raises `NetlinkError` (errno EBADMSG), never IndexError
or struct.error. `NetlinkError` is an `OSError`, so callers that already treat netlink
failures as OS errors keep working. Hot decoders (adapters/ctnetlink.py) may read fixed
offsets themselves, but take their constants, headers and error handling from here.
Imports nothing from aitherfwd: it is the bottom of the adapters.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
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
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
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
    return _NLMSGHDR.pack(length, msg_type, flags, seq, pid)


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
        length, kind, flags, seq, pid = _NLMSGHDR.unpack_from(data, pos)
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
            orig_len = HEADER if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(data, orig)[0]
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


# --- batches ------------------------------------------------------------------------------


class Batch:
    """An nfnetlink batch: BATCH_BEGIN (res_id = subsystem), messages, BATCH_END. Every
    message asks for an ack, so `Acks` can tell which ones the kernel refused; the kernel
    applies the batch as one transaction, all or nothing."""

    def __init__(self, first_seq: int, subsys: int = NFNL_SUBSYS_NFTABLES) -> None:
        self.subsys = subsys
        self.begin_seq = first_seq
        self.seqs: list[int] = []
        self._parts = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, res_id=subsys)]
        self._next = first_seq + 1
        self._encoded: bytes | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, kind: int, attrs: bytes, *, family: int, flags: int = 0) -> int:
        """Append one message of the batch's subsystem; returns its sequence number."""
        if self._encoded is not None:
            raise ValueError("batch already encoded")
        seq = self._next
        self._next += 1
        msg_type = nfnl_type(self.subsys, kind)
        self._parts.append(
            message(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, attrs, family=family)
        )
        self.seqs.append(seq)
        return seq

    @property
    def end_seq(self) -> int:
        return self._next

    def next_seq(self) -> int:
        """The first sequence number after this batch (for the next one)."""
        return self._next + 1

    def encode(self) -> bytes:
        if self._encoded is None:
            end = message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._next, res_id=self.subsys)
            self._encoded = b"".join([*self._parts, end])
        return self._encoded


class Acks:
    """Collects the answers to a batch: seq → errno (0 = accepted), the kernel's messages."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.errnos: dict[int, int] = {}
        self.messages: dict[int, str] = {}
        self._wanted = set(batch.seqs)

    @property
    def complete(self) -> bool:
        return not self._wanted

    def feed(self, data: bytes) -> None:
        """One datagram of answers. A refused BATCH_BEGIN refuses the whole batch: raises."""
        for msg in messages(data):
            if msg.type != NLMSG_ERROR:
                continue
            code, text = error_code(msg.data, msg.start, msg.end)
            if msg.seq == self.batch.begin_seq and code:
                raise error(code, "nfnetlink batch", seq=msg.seq, kernel=text)
            if msg.seq in self._wanted:
                self._wanted.discard(msg.seq)
                self.errnos[msg.seq] = code
                if text:
                    self.messages[msg.seq] = text

    def refused(self) -> dict[int, int]:
        return {seq: code for seq, code in self.errnos.items() if code}


# --- sockets ------------------------------------------------------------------------------


class Channel:
    """A NETLINK_NETFILTER socket: `with Channel(timeout=2) as ch: ch.request(msg)`."""

    def __init__(
        self, groups: int = 0, *, rcvbuf: int | None = None, timeout: float | None = None
    ) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        try:
            self.sock.bind((0, groups))
            if rcvbuf is not None:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except OSError:  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            with contextlib.suppress(OSError):  # else errors come without the kernel's text
                self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            self.sock.close()
            raise
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self._seq = itertools.count(1)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        return next(self._seq)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def datagrams(self, bufsize: int = 1 << 16) -> Iterator[bytes]:
        """Received datagrams until the caller stops; the whole read is bounded by the
        channel's timeout (ETIMEDOUT), not only each recv."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NetlinkError(errno.ETIMEDOUT, "no complete netlink answer in time")
                self.sock.settimeout(left)
            try:
                yield self.sock.recv(bufsize)
            except TimeoutError as exc:
                raise NetlinkError(errno.ETIMEDOUT, "no complete netlink answer in time") from exc

    def request(self, data: bytes, what: str = "netlink request") -> list[Message]:
        """Send one request and return its replies: until NLMSG_DONE for a dump, until the
        ack with NLM_F_ACK, else the first answer. An error answer raises NetlinkError."""
        if len(data) < HEADER:
            raise malformed("request shorter than a message header")
        _, _, flags, seq, _ = _NLMSGHDR.unpack_from(data)
        self.send(data)
        return collect(self.datagrams(), seq, flags, what)

    def send_batch(self, batch: Batch) -> Acks:
        """Send a batch and collect one answer per message (within the timeout)."""
        acks = Acks(batch)
        self.send(batch.encode())
        if acks.complete:
            return acks
        for data in self.datagrams():
            acks.feed(data)
            if acks.complete:
                break
        return acks


def collect(datagrams: Iterable[bytes], seq: int, flags: int, what: str) -> list[Message]:
    """The replies to request `seq` (sent with `flags`) from a stream of datagrams."""
    out: list[Message] = []
    dump = flags & NLM_F_DUMP == NLM_F_DUMP
    for data in datagrams:
        for msg in messages(data):
            if msg.seq != seq:
                continue
            if msg.type == NLMSG_ERROR:
                check(msg, what)
                if not dump:
                    return out
            elif msg.type == NLMSG_DONE:
                return out
            else:
                out.append(msg)
                if not dump and not flags & NLM_F_ACK and not msg.flags & NLM_F_MULTI:
                    return out
    raise malformed(f"{what}: the answer ended early")
