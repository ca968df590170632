"""A bulk ban held compactly (a run of `dynamic/singles.py`), for real: the real daemon in a
namespace takes 2,001 addresses in one request, the banned client's TCP connects are
dropped while another client is served, and still after a restart (the store's rows
compacted into a run again) and after another tool flushed the set (the drift repair puts
the run back); lifting one address from the run lets it in;
a re-block of the whole run with a short timeout moves it to a new run (the request taken
as columns: control/bulkblocks.py), which the store keeps as the same blocks extended, and
at that timeout the kernel lets the client in again, the daemon forgets all of them and
their history rows say they expired."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.nft import Nft
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.kernel.test_daemon import CONFIG, POLICY, TCP_PORTS

pytestmark = pytest.mark.kernel

SET = "block_v4"
OTHERS = [f"10.77.{200 + i // 250}.{i % 250 + 1}" for i in range(2000)]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(clients_wanted=2) as lab:
        lab.listen(TCP_PORTS, hold=[22])
        yield lab


def _kernel(lab: Lab) -> set[str]:
    with inside(lab.server):
        return {e["elem"]["val"] for e in Nft().set_elements(SET)}


def _history(d: DaemonProc, address: str) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = d.ok("GET", f"/v1/explain/{address}")["history"]
    return history


def _bulk(addresses: list[str], ttl: str) -> dict[str, object]:
    return {"blocks": [{"address": a, "ttl": ttl, "reason": "bulk"} for a in addresses]}


def test_a_bulk_ban_is_dropped_lifted_reblocked_and_expires_for_real(
    lab: Lab, tmp_path: Path
) -> None:
    lan, world = lab.clients
    d = DaemonProc(lab.server, tmp_path, POLICY, CONFIG).start()
    try:
        assert d.ok("POST", "/v1/blocks", _bulk([*OTHERS, lan.v4], "1h"))["count"] == 2001
        assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
        assert lab.tcp(world, world.server_v4, 443) == "ok"
        assert _kernel(lab) == {*OTHERS, lan.v4}
        assert d.stop(signal.SIGTERM) == 0
        d.start()  # restored from the store: compacted into a run again (`compact`)
        listed = {b["address"]: b for b in d.ok("GET", "/v1/blocks")["blocks"]}
        assert len(listed) == 2001 and listed[lan.v4]["reason"] == "bulk"
        assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
        with inside(lab.server):  # another tool flushes the set: the run is put back
            Nft().run([{"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": SET}}}])
        until(lambda: _kernel(lab) == {*OTHERS, lan.v4}, 15, "the drift repair")
        assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"

        assert d.cli("unblock", lan.v4).returncode == 0  # out of the middle of the run
        assert lab.tcp(lan, lan.server_v4, 443) == "ok"
        assert d.ok("GET", "/v1/blocks")["count"] == 2000
        assert lan.v4 not in _kernel(lab)

        assert d.ok("POST", "/v1/blocks", _bulk([lan.v4, *OTHERS], "4s"))["count"] == 2001
        assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
        # the store: the others' blocks extended in place (one block each, started at the
        # first ban), the client's a new block after its unblock
        (other,) = _history(d, OTHERS[7])
        assert (other["started_at"], other["ended_at"]) == (listed[OTHERS[7]]["created_at"], None)
        assert [h["end_reason"] for h in _history(d, lan.v4)] == [None, "unblocked"]
        until(lambda: lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "ok", 15, "the timeout")
        until(lambda: d.ok("GET", "/v1/blocks")["count"] == 0, 10, "the daemon forgetting")
        until(lambda: not _kernel(lab), 10, "the kernel's set empty")
        assert lab.tcp(world, world.server_v4, 443) == "ok"
        events = [e["event"] for e in d.audit_events()]
        assert events.count("unblocked") == 1
        assert [h["end_reason"] for h in _history(d, OTHERS[7])] == ["expired"]
        assert [h["end_reason"] for h in _history(d, lan.v4)] == ["expired", "unblocked"]
    finally:
        d.cleanup()
