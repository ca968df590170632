"""Control-socket transport, peer credentials (layer L2).

Owns: `Peer`, who is on the other end of a control connection — SO_PEERCRED (pid, uid, gid
at connect time) and SO_PEERGROUPS (supplementary groups), read once per connection, before
anything of the request. Must not import anything of the firewall.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# Not exported by the socket module; Linux >= 4.13 (include/uapi/asm-generic/socket.h).
SO_PEERGROUPS: int = getattr(socket, "SO_PEERGROUPS", 59)
# `struct ucred { pid_t pid; uid_t uid; gid_t gid; }`: three 32-bit C ints on every Linux ABI.
# The stdlib has no decoder for it and ctypes would be a heavier dependency for 12 bytes, so we
# unpack it by hand; uid_t and gid_t are unsigned, hence "iII" (same size as "3i").
_UCRED = struct.Struct("iII")
_GID = struct.Struct("I")
# CPython refuses a getsockopt() buffer above 1024 bytes, so at most 256 supplementary groups.
_MAX_GROUPS_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end: SO_PEERCRED at connect time plus supplementary groups."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


class _SockOpts(Protocol):
    """What we need of a socket: `socket.socket` or asyncio's TransportSocket wrapper."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def read_peer(sock: _SockOpts) -> Peer:
    """The credentials of the process that connected `sock` (a connected AF_UNIX socket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid, groups=_peer_groups(sock))


def _peer_groups(sock: _SockOpts) -> tuple[int, ...]:
    """Supplementary groups; empty (fail closed for group roles) when the kernel cannot say."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _MAX_GROUPS_BYTES)
    except OSError as exc:
        if exc.errno == errno.ERANGE:
            log.warning("peer has too many supplementary groups limit=%d", _MAX_GROUPS_BYTES // 4)
            return ()
        if exc.errno == errno.ENOPROTOOPT:  # kernel older than 4.13
            return ()
        raise
    return tuple(gid for (gid,) in _GID.iter_unpack(raw[: len(raw) - len(raw) % _GID.size]))
