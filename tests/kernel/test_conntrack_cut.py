"""Conntrack queries and cuts over our own ctnetlink code (adapters/ctquery.py), for real:
a ban through the daemon cuts the banned source's established connections, IPv4 and
IPv6, while another source's survive; the anti-lockout query finds live admin sessions in
both families and not a half-open one; a filter the kernel refuses is a ConntrackError.
Real TCP connections between namespaces; the server's conntrack table is read with the
full-table dump of adapters/ctnetlink.py, an independent path."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

import pytest

from aitherfwd.adapters import ctnetlink, ctquery
from aitherfwd.adapters.conntrack import ConntrackError, NetlinkConntrack
from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.dynamic.ctcount import CtTable
from aitherfwd.reconcile import transaction
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Client, Lab
from lab.wait import until
from tests.kernel.test_daemon import CONFIG, POLICY

pytestmark = pytest.mark.kernel

# in a client's namespace: drop the server's SYN-ACKs, so the handshake never completes
HALF_OPEN = """
table inet halfopen {
  chain input {
    type filter hook input priority 0;
    tcp sport 22 tcp flags & (syn | ack) == syn | ack drop
  }
}
"""


def _table(lab: Lab) -> CtTable:
    with inside(lab.server):
        return ctnetlink.dump()


def _count(table: CtTable, address: str) -> int:
    return table.count(ipaddress.ip_address(address))


def _apply_policy(lab: Lab, tmp_path: Path) -> None:
    """The daemon's test policy in the server namespace (its rules make conntrack track)."""
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml").policy
    assert policy is not None
    with inside(lab.server):
        nft = Nft()
        nft.run(transaction(compile_policy(policy), nft.observe()))


def _hold_both(lab: Lab, client: Client, port: int) -> None:
    lab.hold_connection(client, client.server_v4, port, seconds=60)
    lab.hold_connection(client, client.server_v6, port, seconds=60)


def test_a_ban_cuts_the_banned_sources_connections_v4_and_v6_and_spares_another(
    tmp_path: Path,
) -> None:
    with Lab(clients_wanted=2) as lab:
        lab.listen([443], hold=[443])
        banned, other = lab.clients
        d = DaemonProc(lab.server, tmp_path, POLICY, CONFIG).start()
        try:
            _hold_both(lab, banned, 443)
            _hold_both(lab, other, 443)
            before = _table(lab)
            for c in (banned, other):
                assert _count(before, c.v4) == 1 and _count(before, c.v6) == 1
            d.ok("POST", "/v1/blocks", {"address": banned.v4, "ttl": "10m"})
            d.ok("POST", "/v1/blocks", {"address": banned.v6, "ttl": "10m"})

            def cut() -> bool:
                t = _table(lab)
                return _count(t, banned.v4) == 0 and _count(t, banned.v6) == 0

            until(cut, 10, "the banned source's tracked connections cut, v4 and v6")
            after = _table(lab)
            assert _count(after, other.v4) == 1 and _count(after, other.v6) == 1
            assert lab.tcp(other, other.server_v6, 443) == "ok"
            assert lab.tcp(banned, banned.server_v4, 443, timeout=0.5) == "timeout"
            # a source the event-fed table knows holds no entry is not cut (no walk of the
            # kernel's conntrack hash); one it knows holds some still is
            until(
                lambda: d.ok("GET", "/v1/status")["conntrack"]["resyncs"] >= 1, 10, "the first dump"
            )
            d.ok("POST", "/v1/blocks", {"address": "10.77.250.1", "ttl": "10m"})
            assert d.ok("GET", "/v1/status")["conntrack"]["cuts_skipped"] == 1
            lab.hold_connection(other, other.server_v4, 443, seconds=60)
            until(lambda: _count(_table(lab), other.v4) == 2, 5, "a second connection")
            d.ok("POST", "/v1/blocks", {"address": other.v4, "ttl": "10m"})
            until(lambda: _count(_table(lab), other.v4) == 0, 10, "other's entries cut")
            assert d.ok("GET", "/v1/status")["conntrack"]["cuts_skipped"] == 1
        finally:
            d.cleanup()


def test_the_cut_deletes_exactly_the_sources_entries_and_counts_them(tmp_path: Path) -> None:
    with Lab(clients_wanted=2) as lab:
        lab.listen([22, 443], hold=[22, 443])
        _apply_policy(lab, tmp_path)
        a, b = lab.clients
        for c in (a, b):
            _hold_both(lab, c, 22)
            _hold_both(lab, c, 443)
        with inside(lab.server):
            ct = NetlinkConntrack()
            assert ct.delete_source(ipaddress.ip_address(a.v6)) == 2
            assert ct.delete_source(ipaddress.ip_address(a.v4)) == 2
            assert ct.delete_source(ipaddress.ip_address(a.v4)) == 0  # nothing left
            ct.close()
        t = _table(lab)
        assert (_count(t, a.v4), _count(t, a.v6), _count(t, b.v4), _count(t, b.v6)) == (0, 0, 2, 2)


def test_anti_lockout_sees_live_admin_sessions_v4_and_v6_and_not_a_half_open_one(
    tmp_path: Path,
) -> None:
    with Lab(clients_wanted=2) as lab:
        lab.listen([22, 443], hold=[22, 443])
        _apply_policy(lab, tmp_path)
        admin, half = lab.clients
        _hold_both(lab, admin, 22)
        _hold_both(lab, half, 443)  # established, but not to an admin port
        (tmp_path / "halfopen.nft").write_text(HALF_OPEN)
        res = lab.exec(half.ns, ["nft", "-f", str(tmp_path / "halfopen.nft")], timeout=10)
        assert res.returncode == 0, res.stderr
        assert lab.tcp(half, half.server_v4, 22, timeout=0.5) == "timeout"
        assert lab.tcp(half, half.server_v6, 22, timeout=0.5) == "timeout"
        t = _table(lab)
        assert _count(t, half.v4) == 2 and _count(t, half.v6) == 2  # 443 + the half-open one
        with inside(lab.server):
            ct = NetlinkConntrack()
            peers = ct.established_peers([22, 2222])
            ct.close()
    assert peers == {
        (ipaddress.ip_address(admin.v4), 22),
        (ipaddress.ip_address(admin.v6), 22),
    }


def test_a_filter_the_kernel_refuses_is_a_conntrack_error_and_the_port_still_works() -> None:
    with Lab(clients_wanted=0) as lab, inside(lab.server):
        ct = NetlinkConntrack()
        unknown_flag = 1 << 20

        def refused(ch: object) -> object:
            request = ctquery.by_tcp_port(socket.AF_INET, 22, 1, filter_flags=unknown_flag)
            return ch.request(request, "ct dump")  # type: ignore[attr-defined]

        with pytest.raises(ConntrackError) as info:
            ct._run("conntrack query", refused)
        assert info.value.code == "E-CONNTRACK"
        cause = info.value.__cause__
        assert isinstance(cause, OSError) and cause.errno in (errno.EINVAL, errno.EOPNOTSUPP)
        assert ct.established_peers([22]) == set()  # a fresh socket after the failed one
        ct.close()
