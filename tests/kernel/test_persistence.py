"""Nothing lost, with the real daemon and real packets: a corrupt state database and a
full disk never stop enforcement; notifications reach a webhook in the namespace;
explain tells the story of a block; the audit log follows logrotate and rotates."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from aitherfwd.adapters.nft import Nft
from aitherfwd.adapters.store import Store
from aitherfwd.dynamic.blocks import Block
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.kernel.test_daemon import CONFIG, POLICY, TCP_PORTS

pytestmark = pytest.mark.kernel

HOOK_PORT = 8099
REPUTATION = f"""\
reputation:
  threshold: 5
  temp_block: 30s
  permanent_after: 2
  memory: 1h
notify:
  webhooks:
    - url: http://127.0.0.1:{HOOK_PORT}/sentry/threats
      events: [block, permanent, unblock]
      timeout: 2
  retries: 2
"""


class Receiver:
    """An HTTP server inside the daemon's namespace that records POSTed JSON bodies."""

    def __init__(self, ns: str, status: int = 200) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        with inside(ns):  # the listening socket belongs to the namespace it was made in
            self.server = HTTPServer(("127.0.0.1", HOOK_PORT), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(clients_wanted=2) as lab:
        lab.listen(TCP_PORTS)
        yield lab


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProc]:
    d = DaemonProc(lab.server, tmp_path, POLICY + REPUTATION, CONFIG + AUDIT_CONFIG)
    try:
        yield d
    finally:
        d.cleanup()


AUDIT_CONFIG = """\
[daemon]
audit_max_bytes = 20000
audit_keep = 2
"""


def _threats(d: DaemonProc, source: str, n: int, severity: str = "low") -> Any:
    event = {"type": "SENTRY_INJECTION", "source_ip": source, "severity": severity}
    return d.ok(
        "POST", "/v1/threats", {"events": [{**event, "detail": f"probe {i}"} for i in range(n)]}
    )


def test_self_decided_blocks_are_posted_to_the_webhook(lab: Lab, daemon: DaemonProc) -> None:
    receiver = Receiver(lab.server)
    try:
        daemon.start()
        lan = lab.clients[0]
        _threats(daemon, lan.v4, 5)
        until(lambda: len(receiver.received) >= 1, 5, "the block notification")
        note = receiver.received[0]
        assert note["path"] == "/sentry/threats"
        body = note["body"]
        assert body["type"] == "FIREWALL_IP_BLOCKED" and body["source_ip"] == lan.v4
        assert body["block"]["kind"] == "temporary"
        assert [e["detail"] for e in body["block"]["events"]] == [f"probe {i}" for i in range(5)]
        # manual blocks are the operator's own decision: no notification
        daemon.ok("POST", "/v1/blocks", {"address": lab.clients[1].v4, "ttl": "1m"})
        daemon.ok("DELETE", f"/v1/blocks/{lan.v4}")
        until(lambda: len(receiver.received) >= 2, 5, "the unblock notification")
        assert receiver.received[1]["body"]["type"] == "FIREWALL_IP_UNBLOCKED"
        _threats(daemon, lan.v4, 1, "critical")  # second block within memory: permanent
        until(lambda: len(receiver.received) >= 3, 5, "the permanent-block notification")
        assert receiver.received[2]["body"]["block"]["kind"] == "permanent"
        assert len(receiver.received) == 3
        assert daemon.ok("GET", "/v1/status")["notifications"]["sent"] == 3
    finally:
        receiver.close()


def test_a_dead_webhook_never_delays_enforcement(lab: Lab, daemon: DaemonProc) -> None:
    daemon.start()  # nothing listens on the webhook port: every delivery is refused
    lan = lab.clients[0]
    answer = _threats(daemon, lan.v4, 1, "high")
    assert [b["address"] for b in answer["blocked"]] == [lan.v4]
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    until(
        lambda: daemon.ok("GET", "/v1/status")["notifications"]["failed"] == 1,
        10,
        "the notification given up after its retries",
    )


def test_explain_tells_the_story_of_a_block(lab: Lab, daemon: DaemonProc) -> None:
    daemon.start()
    lan = lab.clients[0]
    _threats(daemon, lan.v4, 2)
    before = daemon.ok("GET", f"/v1/explain/{lan.v4}?port=443,8111")
    assert not before["blocked"] and before["zone"] == "lan"
    assert [(v["port"], v["verdict"], v["rule"]) for v in before["verdicts"]] == [
        (443, "allow", "web"),
        (8111, "allow", "secrets_lan"),
    ]
    assert before["reputation"]["score"] == pytest.approx(2, abs=0.01)
    assert len(before["reputation"]["recent_events"]) == 2
    _threats(daemon, lan.v4, 3)
    after = daemon.ok("GET", f"/v1/explain/{lan.v4}")
    assert after["blocked"] and after["block"]["source"] == "reputation"
    assert 25 <= after["block"]["remaining_seconds"] <= 30
    assert after["verdicts"][0]["verdict"] == "deny" and after["verdicts"][0]["port"] == 22
    (entry,) = after["history"]
    assert entry["ended_at"] is None and len(entry["events"]) == 5
    cli = daemon.cli("explain", lan.v4, "--port", "443")
    assert cli.returncode == 0, cli.stderr
    assert "BLOCKED" in cli.stdout and "SENTRY_INJECTION" in cli.stdout
    bad = daemon.request("GET", "/v1/explain/not-an-ip")
    assert bad[0] == 400


def test_a_reboot_restores_every_live_block_with_its_remaining_timeout(
    lab: Lab, daemon: DaemonProc
) -> None:
    """SIGKILL, the table gone (what a reboot leaves), start again: the live blocks are back
    in the kernel with their remaining timeouts (±2 s), the expired one is not, and a
    reload afterwards keeps them."""
    daemon.start()
    lan, other = lab.clients
    blocks = [
        {"address": lan.v4, "ttl": "60s"},
        {"address": f"fd77:0:0:{lan.index}::/64", "ttl": "1h"},
        {"address": other.v4, "ttl": "2s"},  # expires while the daemon is down
        {"address": "10.77.250.9"},  # permanent
    ]
    daemon.ok("POST", "/v1/blocks", {"blocks": blocks})
    killed_at = time.time()
    daemon.stop(signal.SIGKILL)
    with inside(lab.server):
        Nft().delete_table()
    until(lambda: time.time() > killed_at + 3, 10, "the short block to expire")
    daemon.start()
    restored_at = time.time()
    with inside(lab.server):
        nft = Nft()
        v4 = {
            e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e: e
            for e in nft.set_elements("block_v4")
        }
        v6 = nft.set_elements("block_v6_net")
    assert set(v4) == {lan.v4, "10.77.250.9"}
    remaining = 60 - (restored_at - killed_at)
    assert abs(v4[lan.v4]["elem"]["expires"] - remaining) <= 2, v4[lan.v4]
    assert v4["10.77.250.9"] == "10.77.250.9"  # permanent: no timeout at all
    (prefix,) = v6
    assert abs(prefix["elem"]["expires"] - (3600 - (restored_at - killed_at))) <= 2
    listed = {b["address"] for b in daemon.ok("GET", "/v1/blocks")["blocks"]}
    assert other.v4 not in listed and lan.v4 in listed
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    assert lab.tcp(lan, lan.server_v6, 443, timeout=0.5) == "timeout"
    assert lab.tcp(other, other.server_v4, 443) == "ok"
    assert daemon.ok("POST", "/v1/reload", {"force": False})["result"] in {"applied", "unchanged"}
    extra = "rules:\n  - {name: extra, dest_ports: [7070], protocol: tcp, action: allow}\n"
    daemon.policy.write_text(daemon.policy.read_text().replace("rules:\n", extra, 1))
    reloaded = daemon.ok("POST", "/v1/reload", {})  # or inotify got there first
    assert reloaded["result"] in {"applied", "unchanged"} and reloaded["generation"] == 2
    with inside(lab.server):
        after = {e["elem"]["val"] for e in Nft().set_elements("block_v4") if isinstance(e, dict)}
    assert lan.v4 in after
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"


def test_a_large_restore_reaches_the_kernel_in_full_across_its_batches(
    lab: Lab, daemon: DaemonProc
) -> None:
    """60,000 stored blocks (more than one restore batch) after a "reboot": every one is
    in the kernel, the last batch's too, and a client in it is dropped."""
    lan, other = lab.clients
    now = time.time()
    keys = [f"10.{78 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(60_000 - 1)]
    keys.append(lan.v4)  # restored in the last batch
    store = Store(daemon.state)
    store.save_blocks([Block(k, now + 3600, "seeded", "manual", now) for k in keys])
    store.close()
    daemon.start()
    with inside(lab.server):
        in_kernel = Nft().set_elements("block_v4")
    assert len(in_kernel) == len(keys)
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    assert lab.tcp(other, other.server_v4, 443) == "ok"
    assert daemon.ok("GET", "/v1/status")["elements"]["block_v4"] == len(keys)


def test_a_corrupt_database_is_moved_aside_and_the_kernel_keeps_every_ban(
    lab: Lab, daemon: DaemonProc
) -> None:
    daemon.start()
    lan, other = lab.clients
    daemon.ok(
        "POST", "/v1/blocks", {"blocks": [{"address": lan.v4, "ttl": "10m"}, {"address": lan.v6}]}
    )
    daemon.stop(signal.SIGKILL)
    db = daemon.state / "state.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"\x00garbage, not SQLite\n" * 64)
    daemon.start()
    status = daemon.ok("GET", "/v1/status")
    assert status["store"]["recovered"] and "moved to" in status["store"]["recovered"]
    assert list(daemon.state.glob("state.sqlite3.bad-*"))
    # the bans came back from the kernel, are enforced and are in the new database
    listed = {b["address"]: b for b in daemon.ok("GET", "/v1/blocks")["blocks"]}
    assert set(listed) == {lan.v4, lan.v6}
    assert listed[lan.v6]["expires_at"] is None and listed[lan.v4]["expires_at"] is not None
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    assert lab.tcp(other, other.server_v4, 443) == "ok"
    assert any(e["event"] == "store_recovered" for e in daemon.audit_events())
    daemon.stop(signal.SIGKILL)
    daemon.start()  # the new database holds them now
    assert daemon.ok("GET", "/v1/status")["store"]["recovered"] is None
    assert {b["address"] for b in daemon.ok("GET", "/v1/blocks")["blocks"]} == {lan.v4, lan.v6}


def test_a_full_disk_is_reported_and_enforcement_goes_on(
    lab: Lab, daemon: DaemonProc, tmp_path: Path
) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        daemon.state = mount / "state"
        daemon.start()
        lan = lab.clients[0]
        filler = mount / "filler"
        with filler.open("wb") as fh:  # fill every block the database could grow into
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        blocks = [{"address": f"10.77.200.{i}", "ttl": "5m"} for i in range(1, 250)]
        blocks += [{"address": lan.v4, "ttl": "5m", "reason": "x" * 500}]
        answer = daemon.ok("POST", "/v1/blocks", {"blocks": blocks})  # still a 200
        assert answer["count"] == len(blocks)
        assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
        status = daemon.ok("GET", "/v1/status")
        assert status["store"]["disk_full"] is True and status["store"]["write_errors"] >= 1
        assert "database or disk is full" in daemon.log.read_text()
        filler.unlink()
        daemon.ok("POST", "/v1/blocks", {"address": lab.clients[1].v4, "ttl": "5m"})
        # the writes the full disk refused are retried by the housekeeping (every 2 s)
        until(lambda: daemon.ok("GET", "/v1/status")["store"]["disk_full"] is False, 10, "room")
    finally:
        daemon.stop(signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_audit_lines_follow_logrotate_rotate_and_survive_injection(
    lab: Lab, daemon: DaemonProc
) -> None:
    daemon.start()
    lan = lab.clients[0]
    hostile = 'x"}\n{"event":"forged"}\u2028; nft flush ruleset\r\x1b[2J'
    daemon.ok("POST", "/v1/blocks", {"address": lan.v4, "ttl": "1m", "reason": "a; flush ruleset"})
    assert daemon.request("DELETE", "/v1/blocks/" + quote(hostile, safe=""))[0] == 400
    assert daemon.request("POST", "/v1/blocks", {"address": hostile})[0] == 400
    events = daemon.audit_events()
    blocked = [e for e in events if e["event"] == "blocked"]
    assert blocked[0]["reason"] == "a; flush ruleset" and blocked[0]["action"] == "block"
    assert blocked[0]["actor"]["uid"] == 0 and blocked[0]["source_ip"] == lan.v4
    assert not any(e.get("event") == "forged" for e in events)
    # rejected requests: in their own file, the second within 10 s only counted (for now)
    noise = daemon.audit.with_name("requests.jsonl").read_text().splitlines()
    rejected = [json.loads(line) for line in noise]
    assert [(r["status"], r["count"]) for r in rejected] == [(400, 1)]
    assert rejected[0]["actor"]["uid"] == 0
    assert rejected[0]["path"] == "/v1/blocks/" + hostile  # kept verbatim, on one line
    # logrotate: move the file, SIGHUP, the next line goes to a new file
    shutil.move(daemon.audit, daemon.audit.with_name("audit.jsonl.logrotate"))
    daemon.send(signal.SIGHUP)

    def written_anew() -> bool:
        daemon.ok("POST", "/v1/blocks", {"address": "10.77.202.1", "ttl": "1m"})
        return daemon.audit.exists()

    until(written_anew, 5, "a new audit file after SIGHUP")
    moved = daemon.audit.with_name("audit.jsonl.logrotate").read_text().splitlines()
    assert json.loads(moved[-1])["event"] in ("blocked", "request_rejected")
    # size-based rotation (audit_max_bytes = 20000, keep 2)
    for i in range(100):
        daemon.ok(
            "POST",
            "/v1/blocks",
            {"address": f"10.77.201.{i + 1}", "ttl": "1m", "reason": "r" * 400},
        )
    assert daemon.audit.with_name("audit.jsonl.1").exists()
    assert daemon.audit.with_name("audit.jsonl.2").exists()
    assert not daemon.audit.with_name("audit.jsonl.3").exists()
    for path in daemon.audit.parent.glob("audit.jsonl*"):
        for line in path.read_text().splitlines():
            json.loads(line)
