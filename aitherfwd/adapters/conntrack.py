"""The daemon's conntrack port over our own ctnetlink code (layer L2).

Owns: `NetlinkConntrack` (daemon/ports.py `Conntrack`): the peers holding established TCP
sessions to given local ports (anti-lockout) and the cut of a source's tracked
connections after a ban, both kernel-filtered dumps (CTA_FILTER, Linux ≥ 5.8) encoded and
decoded in adapters/ctquery.py; and `ConntrackError`, what a refusal of the kernel
becomes. One netlink socket per calling thread, reused (the daemon calls from worker
threads); a failed call closes it.

No pyroute2: it cost ≈ 8 MB of RSS once imported and a new socket and a generic decoder
per call, in a worker thread after every ban.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from typing import TypeVar

from aitherfwd.adapters import ctquery
from aitherfwd.adapters.netlink import NetlinkError
from aitherfwd.adapters.nlchannel import Channel
from aitherfwd.errors import AitherError, KernelUnavailableError
from aitherfwd.policy.model import IPAddress

T = TypeVar("T")


class ConntrackError(AitherError):
    """The kernel refused a conntrack request (its netlink errno), or did not answer."""

    code = "E-CONNTRACK"


class NetlinkConntrack:
    """Conntrack queries and cuts over ctnetlink, one reusable socket per thread."""

    def __init__(self, timeout: float = ctquery.TIMEOUT) -> None:
        self._conn = ctquery.Conn(timeout)

    def established_peers(self, ports: Collection[int]) -> set[tuple[IPAddress, int]]:
        """(peer address, local port) of every ESTABLISHED TCP connection to `ports`."""
        wanted = sorted({p for p in ports if 0 < p < 65536})  # the policy validated them
        if not wanted:
            return set()
        found = self._run("conntrack query", lambda ch: ctquery.established_peers(ch, wanted))
        return {(ipaddress.ip_address(peer), port) for peer, port in found}

    def delete_source(self, address: IPAddress) -> int:
        """Delete every tracked connection whose original source is `address`; how many."""
        packed = address.packed
        return self._run(
            f"conntrack delete of {address}", lambda ch: ctquery.delete_source(ch, packed)
        )

    def close(self) -> None:
        self._conn.close()

    def _run(self, what: str, work: Callable[[Channel], T]) -> T:
        try:
            return self._conn.run(work)
        except NetlinkError as exc:
            raise ConntrackError(f"{what} failed: {exc}") from exc
        except OSError as exc:  # no netlink socket at all (no CAP_NET_ADMIN, no ctnetlink)
            raise KernelUnavailableError(f"{what}: no conntrack netlink socket: {exc}") from exc
