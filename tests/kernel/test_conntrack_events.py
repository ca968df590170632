"""The conntrack event listener survives event loss: with a tiny socket buffer a burst of
new flows overflows it (ENOBUFS), the loss is reported, a full dump restores the exact
counts, and the same socket keeps delivering events afterwards."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import pytest

from aitherfwd.adapters import ctnetlink
from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.dynamic.ctcount import CtTable
from aitherfwd.reconcile import transaction
from lab.netns import inside
from lab.network import Lab

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
settings: {default_policy: deny, max_connections_per_ip: 0}
rules:
  - {name: dns, dest_ports: [5353], protocol: udp, action: allow}
"""
FLOWS = r"""
import socket, sys
for port in range(int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port)); s.sendto(b"x", (sys.argv[1], 5353)); s.close()
"""


def test_event_loss_is_reported_and_a_dump_restores_the_counts(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml").policy
    assert policy is not None
    with Lab(clients_wanted=1) as lab:
        client = lab.clients[0]
        with inside(lab.server):
            nft = Nft()
            nft.run(transaction(compile_policy(policy), nft.observe()))
            events = ctnetlink.CtEvents()
        events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # overflow soon
        flows = [sys.executable, "-c", FLOWS, client.server_v4]
        assert lab.exec(client.ns, [*flows, "20000", "22000"]).returncode == 0
        table = CtTable()
        assert events.read(table, limit=100_000) is False
        assert events.stats.lost >= 1 and len(table) < 2000
        with inside(lab.server):
            table = ctnetlink.dump()
        assert table.count(ipaddress.ip_address(client.v4)) == 2000
        events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert lab.exec(client.ns, [*flows, "23000", "23100"]).returncode == 0
        assert events.read(table, limit=100_000) is True
        assert len(table) == 2100
        events.close()
