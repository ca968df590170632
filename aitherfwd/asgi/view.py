"""The middleware's local view of the policy and its verdicts (pure: no I/O, time passed in).

Owns: `View` — one generation's policy as the watch stream sent it (control/policyview.py),
its `aitherfwd.evaluator.Evaluator` (the kernel's semantics plus the layer-7 fields), the
trusted proxies and the bypass networks resolved against the policy's zones — and `judge`,
the verdict on one HTTP request: a client in a bypass zone passes without evaluation,
anything else is the evaluator's answer for a new TCP connection from the client to the
service's port with the request's path and authentication, against the blocks the daemon
announced. The same evaluator the daemon's `/v1/evaluate` runs: the parity test compares the
two on random policies.

Must not import adapters or the daemon, nor do I/O.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from aitherfwd import zones as zoning
from aitherfwd.asgi.clientaddr import Trusted
from aitherfwd.dynamic.buckets import TokenBuckets
from aitherfwd.evaluator import Blocked, Evaluator, Request, Verdict
from aitherfwd.policy.model import Action, IPAddress, IPNetwork, Policy, Protocol

BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class View:
    generation: int
    policy: Policy
    evaluator: Evaluator
    trusted_cidrs: Trusted
    trusted_zones: frozenset[str]
    bypass_zones: frozenset[str]
    unknown_zones: tuple[str, ...]  # named in trusted_proxies or bypass_zones, not in the policy
    needs_auth: bool  # some rule has an `authenticated` condition
    zones: dict[int, tuple[list[int], list[str | None]]]  # per IP version: starts, zone

    def zone(self, address: IPAddress) -> str | None:
        """The address's zone: the first zone of the policy that contains it (a bisect)."""
        starts, names = self.zones[address.version]
        return names[bisect_right(starts, int(address)) - 1]

    def is_trusted(self, address: IPAddress) -> bool:
        """A trusted proxy: in a trusted CIDR, or its zone is a trusted zone."""
        if self.trusted_cidrs(address):
            return True
        return bool(self.trusted_zones) and self.zone(address) in self.trusted_zones

    def is_bypassed(self, address: IPAddress) -> bool:
        return bool(self.bypass_zones) and self.zone(address) in self.bypass_zones


def build_view(
    policy: Policy,
    generation: int,
    trusted_cidrs: Sequence[IPNetwork],
    trusted_zones: Sequence[str],
    bypass_zones: Sequence[str],
) -> View:
    names = {z.name for z in policy.zones}
    unknown = sorted({z for z in (*trusted_zones, *bypass_zones) if z not in names})
    return View(
        generation,
        policy,
        Evaluator(policy),
        Trusted(trusted_cidrs),
        frozenset(trusted_zones) & names,
        frozenset(bypass_zones) & names,
        tuple(unknown),
        any(r.authenticated is not None for r in policy.rules),
        {v: _zone_index(policy, v) for v in (4, 6)},
    )


def _zone_index(policy: Policy, version: int) -> tuple[list[int], list[str | None]]:
    """The zones' partition of one IP version as range starts and labels (None: no zone)."""
    starts: list[int] = [0]
    labels: list[str | None] = [None]
    for first, last, zone in zoning.partition(policy.zones, version):
        if starts[-1] == int(first):
            labels[-1] = zone
        else:
            starts.append(int(first))
            labels.append(zone)
        starts.append(int(last) + 1)
        labels.append(None)
    return starts, labels


def judge(  # noqa: PLR0917 - one request's fields
    view: View,
    client: IPAddress,
    port: int,
    path: str,
    authenticated: bool,
    now: float,
    blocked: Blocked | None,
    buckets: TokenBuckets | None,
) -> Verdict:
    """The verdict on a request from `client` to `port` for `path`."""
    if view.is_bypassed(client):
        return Verdict(str(Action.ALLOW), None, None, BYPASS)
    request = Request(client, Protocol.TCP, port, path=path, authenticated=authenticated)
    return view.evaluator.evaluate(request, now, blocked, buckets)
