"""Anti-lockout on the block path, for real (issue 14, item 13): reported threats from a
peer that holds a live SSH session to the host never block it; the same reports from a
peer without one do."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.daemon import DaemonProc
from lab.network import Lab
from tests.kernel.test_daemon import CONFIG, POLICY

pytestmark = pytest.mark.kernel


def _report(d: DaemonProc, source: str) -> dict[str, object]:
    events = [{"type": "SENTRY_PORT_SCAN", "source_ip": source, "severity": "high"}] * 10
    result: dict[str, object] = d.ok("POST", "/v1/threats", {"events": events})
    return result


def test_reported_threats_do_not_block_a_peer_holding_a_live_admin_session(
    tmp_path: Path,
) -> None:
    with Lab(clients_wanted=2) as lab:
        lab.listen([22, 443], hold=[22])
        d = DaemonProc(lab.server, tmp_path, POLICY, CONFIG).start()
        try:
            admin, other = lab.clients
            lab.hold_connection(admin, admin.server_v4, 22)
            out = _report(d, admin.v4)
            assert out["blocked"] == [] and out["protected"] == [admin.v4], out
            assert lab.tcp(admin, admin.server_v4, 443) == "ok"
            out = _report(d, other.v4)
            assert [b["address"] for b in out["blocked"]] == [other.v4]  # type: ignore[attr-defined]
            assert lab.tcp(other, other.server_v4, 443, timeout=0.5) == "timeout"
        finally:
            d.cleanup()
