"""Conntrack through netlink with pyroute2 — the only importer of pyroute2 (layer L2).

Owns: listing the peers that hold established TCP sessions to given local ports
(anti-lockout) and deleting a source's tracked connections (a block cuts them).
pyroute2 is imported lazily: its top-level import costs ~25 MB of RSS, and these calls
run at reload and block time, not per packet. pyroute2's synchronous API runs its own
event loop, so the daemon calls these functions from a worker thread.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Collection
from typing import Any

from aitherfwd.errors import AitherError, KernelUnavailableError
from aitherfwd.policy.model import IPAddress

log = logging.getLogger(__name__)
TCP_CONNTRACK_ESTABLISHED = 3
# pyroute2 reads /proc/net/psched for tc when imported and warns when it cannot; the unit's
# ProcSubset=pid hides /proc/net, and we use no tc: keep that noise out of the journal.
logging.getLogger("pyroute2.netlink.rtnl.tcmsg.common").setLevel(logging.ERROR)


def _conntrack(family: int) -> Any:
    """A conntrack socket for ONE address family: the nfgenmsg family of every request
    follows the socket, and an IPv6 filter on an AF_INET socket is refused with EINVAL."""
    try:
        from pyroute2.conntrack import Conntrack  # noqa: PLC0415
    except ImportError as exc:
        raise KernelUnavailableError(f"pyroute2 is not installed: {exc}") from exc
    return Conntrack(nfgen_family=family)


def _tuple(family: int, **fields: Any) -> Any:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: PLC0415

    return NFCTAttrTuple(family=family, **fields)


def established_peers(ports: Collection[int]) -> set[tuple[IPAddress, int]]:
    """(peer address, local port) of every ESTABLISHED TCP connection to one of `ports`.

    The kernel filters the dump by protocol and destination port (CTA_FILTER, Linux ≥ 5.8),
    so the cost follows the number of admin sessions, not the size of the conntrack table
    (pyroute2 decodes ~5,000 entries/s: a full dump of a busy host would take seconds)."""
    out: set[tuple[IPAddress, int]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = _conntrack(family)
        try:
            for port in sorted(set(ports)):
                wanted = _tuple(family, proto=socket.IPPROTO_TCP, dport=port)
                for entry in ct.dump_entries(tuple_orig=wanted):
                    orig, info = entry.tuple_orig, entry.protoinfo
                    if info is not None and info.state == TCP_CONNTRACK_ESTABLISHED:
                        out.add((ipaddress.ip_address(orig.saddr), int(orig.dport)))
        finally:
            ct.close()
    return out


def delete_source(address: IPAddress) -> int:
    """Delete every tracked connection whose original source is `address`; return how many."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    ct = _conntrack(family)
    deleted = 0
    try:
        entries = list(ct.dump_entries(tuple_orig=_tuple(family, saddr=str(address))))
        for entry in entries:
            try:
                ct.delete(entry)
                deleted += 1
            except Exception as exc:
                log.debug("conntrack delete failed entry=%s error=%s", entry, exc)
    finally:
        ct.close()
    return deleted


class PyrouteConntrack:
    """The daemon's conntrack port (daemon/ports.py) over the functions above. pyroute2's
    own exceptions (NetlinkError for an errno the kernel answers, e.g. EINVAL for a filter
    it does not support) are translated here into `ConntrackError`."""

    def established_peers(self, ports: Collection[int]) -> set[tuple[IPAddress, int]]:
        try:
            return established_peers(ports)
        except (AitherError, OSError):
            raise
        except Exception as exc:  # pyroute2.netlink.exceptions.NetlinkError and kin
            raise ConntrackError(f"conntrack query failed: {exc}") from exc

    def delete_source(self, address: IPAddress) -> int:
        try:
            return delete_source(address)
        except (AitherError, OSError):
            raise
        except Exception as exc:
            raise ConntrackError(f"conntrack delete of {address} failed: {exc}") from exc


class ConntrackError(AitherError):
    """The kernel refused a conntrack request (pyroute2 reported a netlink error)."""

    code = "E-CONNTRACK"
