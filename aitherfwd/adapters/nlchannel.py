"""Netlink sockets and nfnetlink batches over the codec of adapters/netlink.py (layer L2).

Owns: `Channel` (a NETLINK_NETFILTER socket that sends a request and reads its replies
until DONE or the ack, under one overall timeout), `collect` (the replies of one request
among datagrams), and nfnetlink batches — `Batch` (BATCH_BEGIN … BATCH_END, every message
acked) and `Acks` (sequence number → errno, with the kernel's messages) — for the element
writer. Imports only the codec.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
import time
from collections.abc import Iterable, Iterator

from aitherfwd.adapters.netlink import (
    HEADER,
    NETLINK_EXT_ACK,
    NETLINK_NETFILTER,
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    Message,
    NetlinkError,
    check,
    error,
    error_code,
    malformed,
    message,
    messages,
    nfnl_type,
)


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
        _, _, flags, seq, _ = NLMSGHDR.unpack_from(data)
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
