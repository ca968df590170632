"""Self-test of the network namespace harness in tests/netns.py (real packets, needs root)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.netns import (
    Topology,
    list_harness_namespaces,
    ping,
    tcp_connect,
    tcp_connect_many,
    udp_probe,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 for network namespaces",
    ),
]


def test_tcp_and_udp_over_ipv4_and_ipv6() -> None:
    with Topology(clients=1) as topo:
        client = topo.clients[0]
        assert (client.v4, client.server_v4) == ("10.77.1.2", "10.77.1.1")
        assert (client.v6, client.server_v6) == ("fd77:0:0:1::2", "fd77:0:0:1::1")
        listeners = topo.start_listeners(tcp_ports=[8080], udp_ports=[5353])
        for server in (client.server_v4, client.server_v6):
            assert tcp_connect(client.ns, server, 8080) == "ok"
            assert tcp_connect(client.ns, server, 8081) == "refused"
            assert udp_probe(client.ns, server, 5353) == "ok"
            assert udp_probe(client.ns, server, 5354) == "refused"
        assert listeners.wait_for_peer("tcp", 8080, client.v4)
        assert listeners.wait_for_peer("tcp", 8080, client.v6)
        assert listeners.wait_for_peer("udp", 5353, client.v4)
        # No route out of the client namespace: fails at once, nothing leaves it.
        assert tcp_connect(client.ns, "10.77.200.1", 8080) == "unreachable"
        if shutil.which("ping") is not None:
            assert ping(client.ns, client.server_v4)
            assert ping(client.ns, client.server_v6)


def test_extra_source_addresses_and_batched_connects() -> None:
    with Topology(clients=2) as topo:
        first, second = topo.clients
        assert second.server_v4 == "10.77.2.1"
        listeners = topo.start_listeners(tcp_ports=[9000])
        same_link = topo.add_client_address(0, "10.77.1.50/24")
        other_net = topo.add_client_address(0, "10.77.100.7/24")
        extra_v6 = topo.add_client_address(0, "fd77:0:0:1::50/64")
        results = tcp_connect_many(first.ns, first.server_v4, 9000, 5, source=same_link)
        assert results == ["ok"] * 5
        assert tcp_connect(first.ns, first.server_v4, 9000, source=other_net) == "ok"
        assert tcp_connect(first.ns, first.server_v6, 9000, source=extra_v6) == "ok"
        assert tcp_connect(second.ns, second.server_v6, 9000) == "ok"
        for peer in (same_link, other_net, extra_v6, second.v6):
            assert listeners.wait_for_peer("tcp", 9000, peer)
        assert listeners.peers("tcp", 9000).count(same_link) == 5
        result = topo.exec(second.ns, ["ip", "-o", "-4", "addr", "show"], check=True)
        assert "10.77.2.2/24" in result.stdout


def _fail_inside_topology(seen: list[str]) -> None:
    with Topology(clients=2) as topo:
        seen.extend(topo.namespaces)
        topo.start_listeners(udp_ports=[53])
        topo.popen(topo.clients[1].ns, ["sleep", "60"])
        raise RuntimeError("boom")


def test_namespaces_are_removed_when_the_body_raises() -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside_topology(seen)
    assert len(seen) == 3
    assert all(name.startswith(f"afw-{os.getpid()}-") for name in seen)
    assert not set(seen) & set(list_harness_namespaces())
