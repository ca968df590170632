"""The kernel's view of the daemon's outbound sets (layer L3): restore and repair.

Owns: `EgressKernelView`, the part of `egress.EgressRuntime` that puts the sandbox grants
and the resolved domain addresses back into the kernel's sets — every one after a table
loss (`restore_commands`), the kernel's unknown grants adopted at a cold start with an
incomplete store (`reconcile`), and the missing ones after drift (`repair`,
`repair_sets`, `repair_commands`). The grant and domain tables themselves, and the order of
grant changes, are `EgressRuntime`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from aitherfwd.adapters.store import Store
from aitherfwd.daemon.domains import DomainSync
from aitherfwd.daemon.ports import Kernel
from aitherfwd.egress import names as en
from aitherfwd.egress.adopt import grants_from_elements, list_sets, listed_sets
from aitherfwd.egress.grants import GrantTable
from aitherfwd.nft import builders as b
from aitherfwd.policy.model import Policy

log = logging.getLogger(__name__)


class EgressKernelView:
    """Restore and repair of the grant and domain sets; `EgressRuntime` holds the state."""

    grants: GrantTable
    dns: DomainSync
    policy: Policy | None
    store: Store

    def _changed(self, now: float) -> None:
        raise NotImplementedError  # EgressRuntime's: the grants changed (metrics, wake-up)

    def restore_commands(self, now: float, *, domains: bool) -> list[Any]:
        """Element adds for every live grant with its remaining TTL (and, after a table
        loss, every installed domain address). Port grants need the egress sets."""
        cmds = self.grants.restore_commands(now)
        if self.policy is None or self.policy.egress is None:
            port_sets = set(en.PORT_SETS.values())
            cmds = [c for c in cmds if _set_of(c) not in port_sets]
        if domains:
            cmds += self.dns.restore_commands()
        return cmds

    def reconcile(self, nft: Kernel, now: float) -> int:
        """Cold start with a store that may be incomplete: adopt the grants the kernel's
        sandbox sets hold and the store does not know (revocable like any), then `repair`."""
        listed = grants_from_elements(list_sets(nft.set_elements), now)
        found = [g for k, g in listed.items() if not self.grants.get(k, now)]
        if found:
            log.warning("adopted %d sandbox grants found in the kernel", len(found))
            self.grants.load(found)
            self.store.save_grants(found)
            self._changed(now)
        return self.repair(nft, now)

    def repair(self, nft: Kernel, now: float) -> int:
        """Cold start (nothing served yet): put back the grants and resolved addresses
        missing from the kernel's sets. Returns how many elements were put back."""
        present = listed_sets(nft.set_elements, self.repair_sets(now))
        commands = self.repair_commands(present, now)
        if commands:
            nft.run(commands)
        return b.element_count(commands)

    def _wanted(self, now: float) -> dict[str, list[Any]]:
        wanted: dict[str, list[Any]] = {}
        for command in self.restore_commands(now, domains=True):
            ec = b.element_command(command)
            if ec is not None:
                wanted.setdefault(ec.set_name, []).extend(ec.elements)
        return wanted

    def repair_sets(self, now: float) -> list[str]:
        """The sets a repair must list (these sets are small, so they are listed in full)."""
        return sorted(self._wanted(now))

    def repair_commands(self, present: dict[str, set[str] | None], now: float) -> list[Any]:
        """On the event loop, with the listing of `repair_sets` (`listed_sets`, read in the
        writer thread): adds for what should be in those sets and is not. What is wanted is
        taken now, not when the listing was asked for, so a grant revoked meanwhile is not
        put back; the caller hands the adds to the writer in the same step."""
        commands: list[Any] = []
        for name, elems in sorted(self._wanted(now).items()):
            keys = present.get(name)
            if keys is None:
                continue  # the set is gone (the static repair recreates it) or was not listed
            lost = [e for e in elems if b.element_key(e) not in keys]
            if lost:
                commands.append(b.add(b.element(name, lost)))
        return commands


def _set_of(command: Any) -> str | None:
    ec = b.element_command(command)
    return ec.set_name if ec is not None else None
