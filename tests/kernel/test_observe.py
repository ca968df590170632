"""Observing our table without libnftables' full cache (sets, maps and chains listed
cheaply, counters and rules dumped by netlink) sees what `list table` sees, and stays fast
with a large interval set in the namespace."""

from __future__ import annotations

import time

import pytest

from aitherfwd.adapters.elementwriter import ElementWriter
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.geo.elements import RangeElements
from aitherfwd.policy.parse import parse_policy
from aitherfwd.reconcile import Observed
from lab import netns
from lab.netns import inside

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
geoip: {database: /x.mmdb, block_countries: [RU]}
lists: [{name: drop, path: /drop.txt, action: deny}, {name: cdn, path: /cdn.txt}]
zones:
  - {name: cloud, list: cdn}
  - {name: lan, cidrs: [10.77.0.0/16, "fd77::/64"]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow, rate_limit_rps: 10}
  - {name: fr, dest_ports: [8443], protocol: tcp, source_countries: [FR], action: allow}
  - {name: cloud_only, zone: cloud, dest_ports: [9999], action: reject}
"""


def test_observe_sees_what_list_table_sees_and_stays_fast() -> None:
    policy = parse_policy(POLICY, "p.yaml").policy
    assert policy is not None
    ns = netns.create("afw", loopback=False)
    try:
        with inside(ns):
            nft = Nft()
            assert nft.observe() == Observed(False)
            nft.apply(compile_policy(policy))
            assert nft.observe() == Observed.from_listing(nft.list_table(terse=True))
            writer = ElementWriter()
            writer.learn("geo_blocked_v4", "ipv4_addr", ["interval"])
            pairs = [((11 << 24) + 512 * i, (11 << 24) + 512 * i + 255) for i in range(100_000)]
            writer.run(
                [
                    {
                        "add": {
                            "element": {
                                "family": "inet",
                                "table": "aitherfwd",
                                "name": "geo_blocked_v4",
                                "elem": RangeElements(4, pairs),
                            }
                        }
                    }
                ]
            )
            writer.close()
            started = time.perf_counter()
            observed = nft.observe()
            seconds = time.perf_counter() - started
            assert observed == Observed.from_listing(nft.list_table(terse=True))
            assert seconds < 0.5, seconds
    finally:
        netns.delete(ns)
