"""The element writer against the real kernel (issue 15): element batches go by netlink,
byte-compatible with libnftables (nft lists what we wrote as it lists its own), a refused
batch leaves the kernel as it was, and a ban still reaches the kernel in about a
millisecond and drops the client's packets while the namespace holds an interval set of
100,000 prefixes (libnftables 1.0.6 took ~500 ms per write there)."""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.kernel import NftKernel
from aitherfwd.compiler import compile_policy
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b
from aitherfwd.policy.parse import parse_policy
from aitherfwd.reconcile import transaction
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until

pytestmark = pytest.mark.kernel
POLICY = """\
version: 1
settings: {default_policy: deny}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
PREFIXES = 100_000


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(clients_wanted=1) as lab:
        lab.listen([443])
        yield lab


def applied(kernel: NftKernel) -> None:
    policy = parse_policy(POLICY, "p.yaml").policy
    assert policy is not None
    kernel.run(transaction(compile_policy(policy), kernel.observe()))


def listed(ns: str, set_name: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "aitherfwd", set_name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_element_batches_go_by_netlink_and_nft_lists_them_as_its_own(lab: Lab) -> None:
    with inside(lab.server):
        kernel = NftKernel()
        applied(kernel)
        kernel.run(
            [
                b.add(b.element("block_v4", [{"elem": {"val": "192.0.2.7", "timeout": 600}}])),
                b.add(b.element("block_v6_net", [{"prefix": {"addr": "2001:db8::", "len": 48}}])),
            ]
        )
        assert kernel.netlink_batches == 1
        assert kernel.updates_timeouts()  # this kernel (6.10+) updates timeouts on add
    assert "192.0.2.7 timeout 10m" in listed(lab.server, "block_v4")
    assert "2001:db8::/48" in listed(lab.server, "block_v6_net")
    assert "255.255.255.255" not in listed(lab.server, "block_v4")  # the probe cleaned up


def test_a_refused_batch_leaves_the_kernel_as_it_was(lab: Lab) -> None:
    with inside(lab.server):
        kernel = NftKernel()
        applied(kernel)
        with pytest.raises(ApplyError, match="No such file or directory"):
            kernel.run(
                [
                    b.add(b.element("block_v4", ["192.0.2.8"])),
                    {"delete": b.element("block_v4", ["192.0.2.9"])},  # not there: refused
                ]
            )
        assert kernel.netlink_batches == 0
    assert "192.0.2.8" not in listed(lab.server, "block_v4")


def big_interval_set(ns: str) -> None:
    """100,000 /24 prefixes in an interval set of another table (libnftables' cache cost
    comes from any interval set in the namespace)."""
    base = int(ipaddress.IPv4Address("20.0.0.0"))
    elems = ", ".join(f"{ipaddress.IPv4Address(base + i * 256)}/24" for i in range(PREFIXES))
    text = (
        "table inet feeds {\n  set big {\n    type ipv4_addr\n    flags interval\n  }\n}\n"
        f"add element inet feeds big {{ {elems} }}\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=text,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[:500]


def test_a_ban_is_fast_and_drops_packets_beside_100000_prefixes(lab: Lab, tmp_path: Path) -> None:
    client = lab.clients[0]
    big_interval_set(lab.server)
    with DaemonProc(lab.server, tmp_path, POLICY).start() as daemon:
        assert lab.tcp(client, client.server_v4, 443) == "ok"
        latencies = []
        for i in range(20):
            started = time.perf_counter()
            daemon.ok("POST", "/v1/blocks", {"address": f"198.51.100.{i + 1}", "ttl": "10m"})
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        daemon.ok("POST", "/v1/blocks", {"address": client.v4, "ttl": "10m"})
        latencies.append(time.perf_counter() - started)
        until(
            lambda: lab.tcp(client, client.server_v4, 443, timeout=0.5) == "timeout",
            5,
            "the client's packets dropped",
        )
    p50 = statistics.median(latencies)
    assert p50 < 0.05, f"ban p50 {p50 * 1000:.1f} ms beside {PREFIXES} prefixes"
