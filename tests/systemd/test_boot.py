"""`systemctl start aitherfwd` in a real, booted systemd: the Debian package installed with
apt into a minimal bookworm, booted with systemd-nspawn in a lab network namespace, driven
from the host with `nsenter -t <PID 1> -a systemctl ...`, checked with real packets from a
client namespace (see container.py for the machinery; `make test-systemd` runs this).

The tests share one container and run in file order, as an administrator would:
install → start → use → reload → crash → stall → upgrade → stop → remove → purge.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.adapters.nft import Nft
from lab import ROOT
from lab.netns import inside
from lab.network import Client, Lab
from tests.systemd.container import Container

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]

UNIT = "aitherfwd.service"
POLICY = "/etc/aitherfwd/policy.yaml"
WATCHDOG_DROPIN = "/etc/systemd/system/aitherfwd.service.d/50-test-watchdog.conf"
FAILPOINT_DROPIN = "/etc/systemd/system/aitherfwd.service.d/50-test-failpoint.conf"
METRICS = "http://127.0.0.1:9466/metrics"  # the packaged config's [metrics] listen
SERVER_PORTS = [22, 8080]  # the default policy allows 22 and drops everything else


def built_deb() -> Path:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    deb = ROOT / "dist" / f"aitherfwd_{version}_all.deb"
    if not deb.exists():
        pytest.fail(f"{deb} is missing: run `make deb` (or `make test-systemd`, which builds it)")
    return deb


@dataclass
class Box:
    lab: Lab
    ct: Container

    @property
    def client(self) -> Client:
        return self.lab.clients[0]

    def tcp(self, port: int) -> str:
        """A real TCP connect from the client namespace to the container's address."""
        return self.lab.tcp(self.client, self.client.server_v4, port, timeout=1.0)

    def table_in_container(self) -> bool:
        with inside(self.lab.server):
            return Nft().observe().exists

    def started(self) -> None:
        self.ct.ok("systemctl", "start", UNIT)
        wait_for(lambda: self.ct.prop("ActiveState") == "active", 30, "aitherfwd active")

    def status(self) -> dict[str, object]:
        answer: dict[str, object] = json.loads(self.ct.ok("aitherfwd", "status", "--json"))
        return answer


def wait_for(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    deb = built_deb()
    with Lab(clients_wanted=1) as lab:
        lab.listen(SERVER_PORTS, hold=[22])  # SSH sessions stay open, as they would
        with Container(lab.server, deb) as ct:
            yield Box(lab, ct)


def restarted_after(box: Box, old_pid: str, deadline_s: float) -> str:
    def back() -> bool:
        pid = box.ct.prop("MainPID")
        return pid not in ("0", old_pid) and box.ct.prop("ActiveState") == "active"

    wait_for(back, deadline_s, f"systemd to restart aitherfwd (old MainPID {old_pid})")
    return box.ct.prop("MainPID")


def test_installing_the_package_enables_and_starts_nothing(box: Box) -> None:
    assert box.ct.sh("systemctl", "is-enabled", UNIT).stdout.strip() == "disabled"
    assert box.ct.prop("ActiveState") == "inactive"
    assert not box.table_in_container()
    assert box.tcp(8080) == "ok"  # no firewall until the administrator asks for one
    conffiles = box.ct.ok("dpkg-query", "-W", "-f", "${Conffiles}", "aitherfwd")
    assert "/etc/aitherfwd/policy.yaml" in conffiles
    assert "/etc/aitherfwd/aitherfwd.toml" in conffiles
    assert box.ct.ok("getent", "group", "aitherfwd").startswith("aitherfwd:")


def test_systemctl_start_is_active_and_status_text_shows_the_generation(box: Box) -> None:
    box.started()
    assert box.ct.prop("Type") == "notify"
    assert re.match(r"generation 1, policy [0-9a-f]{12}, 0 blocks", box.ct.prop("StatusText"))
    assert box.ct.prop("WatchdogUSec") == "30s"


def test_the_table_is_in_the_container_namespace_and_not_the_hosts(box: Box) -> None:
    assert box.table_in_container()
    assert not Nft().observe().exists, "table inet aitherfwd appeared in the host namespace"
    assert box.tcp(22) == "ok"  # SSH stays reachable under the default policy
    assert box.tcp(8080) == "timeout"  # everything else inbound is dropped


def test_cli_works_as_root_and_is_refused_for_unprivileged_users(box: Box) -> None:
    assert "generation 1" in box.ct.ok("aitherfwd", "status")
    box.ct.ok("useradd", "--no-create-home", "afwnobody")
    box.ct.ok("useradd", "--no-create-home", "--groups", "aitherfwd", "afwreader")

    stranger = box.ct.sh("aitherfwd", "status", user="afwnobody")
    assert stranger.returncode == 1
    assert "lack access to the aitherfwd control socket" in stranger.stderr

    assert "generation 1" in box.ct.ok("aitherfwd", "status", user="afwreader")
    denied = box.ct.sh("aitherfwd", "block", "10.77.1.2", user="afwreader")
    assert denied.returncode != 0
    assert "E-FORBIDDEN" in denied.stderr
    assert box.tcp(22) == "ok"  # the refused block did not happen


def test_fleet_mode_without_the_nats_client_stops_with_a_clear_error(box: Box) -> None:
    """The package does not ship nats-py (docs/fleet.md): a [fleet] config is valid, and a
    daemon started with it says what to install, exit 64, before opening anything."""
    box.ct.write("/root/fleet.toml", '[fleet]\nservers = ["nats://127.0.0.1:4222"]\nname = "p"\n')
    box.ct.ok("aitherfwd", "check-config", "/root/fleet.toml")
    res = box.ct.sh(
        *("aitherfwd", "run", "--config", "/root/fleet.toml", "--socket", "/root/fleet.sock"),
        *("--state-dir", "/root/fleet-state", "--audit-log", "/root/fleet-audit.jsonl"),
    )
    assert res.returncode == 64 and "E-FLEET-NO-CLIENT" in res.stderr, res
    assert "pip install 'aitherfwd[fleet]'" in res.stderr
    assert box.ct.sh("test", "-e", "/root/fleet-state").returncode != 0  # nothing was opened


def test_prometheus_metrics_are_served_on_loopback_by_the_packaged_unit(box: Box) -> None:
    """Debian's prometheus_client (0.16) and the unit's sandbox (IPAddressAllow=localhost)."""
    box.started()
    with inside(box.lab.server), urllib.request.urlopen(METRICS, timeout=10) as resp:
        text = resp.read().decode()
    assert "aitherfwd_policy_generation 1.0" in text
    assert 'aitherfwd_rule_packets_total{action="allow",rule=' in text
    assert "process_resident_memory_bytes" in text


def test_systemctl_reload_applies_a_changed_policy(box: Box) -> None:
    policy = (box.ct.root / POLICY.lstrip("/")).read_text()
    rules = box.status()["rules"]  # the packaged policy's
    web = "  - {name: web, dest_ports: [8080], protocol: tcp, action: allow}\n"
    box.ct.write(POLICY, policy.replace("  - name: ping\n", web + "  - name: ping\n"))
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: box.ct.prop("StatusText").startswith("generation 2"), 20, "generation 2")
    assert box.status()["rules"] == rules + 1
    assert box.tcp(8080) == "ok"
    assert "Reloading aitherfwd.service" in box.ct.ok("journalctl", "-u", UNIT, "-o", "cat")
    audit = (box.ct.root / "var/log/aitherfwd/audit.jsonl").read_text().splitlines()
    applied = [json.loads(line) for line in audit if '"reload_applied"' in line]
    assert applied[-1]["generation"] == 2


def test_a_broken_policy_keeps_the_running_one_and_says_why(box: Box) -> None:
    good = (box.ct.root / POLICY.lstrip("/")).read_text()
    box.ct.write(POLICY, good.replace("dest_ports: [8080]", "dest_ports: [70000]"))
    refused = box.ct.sh("systemctl", "reload", UNIT)
    assert refused.returncode != 0  # systemctl reload itself reports the rejection
    wait_for(lambda: "REJECTED" in box.ct.prop("StatusText"), 20, "the rejection in StatusText")
    status_text = box.ct.prop("StatusText")
    assert status_text.startswith("generation 2")
    assert "E-PORT-RANGE" in status_text and "70000" in status_text
    assert box.ct.prop("ActiveState") == "active"
    last = box.status()["last_reload"]
    assert isinstance(last, dict) and last["result"] == "rejected"
    assert last["errors"][0]["code"] == "E-PORT-RANGE"
    journal = box.ct.ok("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")
    assert "reload rejected: invalid policy" in journal
    assert "E-PORT-RANGE" in journal  # ExecReload's own output names the error
    assert box.tcp(8080) == "ok"  # generation 2 still enforces
    box.ct.write(POLICY, good)
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: "REJECTED" not in box.ct.prop("StatusText"), 20, "the good policy back")


def test_a_reload_that_would_cut_a_live_ssh_session_is_refused(box: Box) -> None:
    """Anti-lockout reads conntrack with its own kernel-filtered ctnetlink dumps."""
    box.lab.hold_connection(box.client, box.client.server_v4, 22, seconds=30)
    good = (box.ct.root / POLICY.lstrip("/")).read_text()
    only_elsewhere = "dest_services: [SSH]\n    source_cidrs: [192.0.2.10/32]"
    box.ct.write(POLICY, good.replace("dest_services: [SSH]", only_elsewhere, 1))
    assert box.ct.sh("systemctl", "reload", UNIT).returncode != 0
    wait_for(lambda: "E-LOCKOUT" in box.ct.prop("StatusText"), 20, "E-LOCKOUT in StatusText")
    assert box.client.v4 in box.ct.prop("StatusText")
    assert box.tcp(22) == "ok"
    box.ct.write(POLICY, good)
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: "REJECTED" not in box.ct.prop("StatusText"), 20, "the good policy back")


def test_sigkill_is_restarted_by_systemd_and_the_bans_survive(box: Box) -> None:
    box.ct.ok("aitherfwd", "block", box.client.v4, "--ttl", "1h", "--reason", "boot test")
    assert box.tcp(22) == "timeout"
    old_pid, restarts = box.ct.prop("MainPID"), int(box.ct.prop("NRestarts"))

    box.ct.ok("systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", UNIT)
    assert box.tcp(22) == "timeout"  # dead or restarting: the table keeps enforcing
    restarted_after(box, old_pid, 30)

    assert int(box.ct.prop("NRestarts")) == restarts + 1
    assert box.client.v4 in box.ct.ok("aitherfwd", "blocks")
    with inside(box.lab.server):
        kernel = {e["elem"]["val"] for e in Nft().set_elements("block_v4")}
    assert box.client.v4 in kernel
    assert box.tcp(22) == "timeout"
    box.ct.ok("aitherfwd", "unblock", box.client.v4)
    assert box.tcp(22) == "ok"


def _journal(box: Box) -> dict[str, Any]:
    journal = box.status().get("journal")
    assert isinstance(journal, dict)
    return journal


def _journal_listening(box: Box) -> bool:
    return bool(_journal(box)["listening"])


def _reputation_events(box: Box, address: str) -> int:
    explained = json.loads(box.ct.ok("aitherfwd", "explain", address, "--json"))
    return int(explained["reputation"]["events"])


def test_sshd_lines_in_the_real_journal_block_their_address_across_a_restart(box: Box) -> None:
    """journald of the booted system, `logger -t sshd` as root (what sshd's own lines look
    like to the journal: SYSLOG_IDENTIFIER=sshd, _UID=0): the client's address climbs the
    ladder to a kernel block at the fifth line; a stop/start of the daemon in the middle
    neither replays the lines read before nor skips the one written while it was down;
    rotating and vacuuming every journal file read so far is survived (reopened after the
    cursor); the same lines from an unprivileged user are not read."""
    good = (box.ct.root / POLICY.lstrip("/")).read_text()
    box.ct.write(POLICY, good + "journal:\n  - {name: ssh, builtin: openssh}\n")
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: _journal_listening(box), 20, "the journal source reading")
    addr = box.client.v4
    line = "Failed password for root from {} port {} ssh2"

    def sshd(address: str, port: int, user: str | None = None) -> None:
        box.ct.ok("logger", "-t", "sshd", line.format(address, port), user=user)

    for port in range(5):  # forged: a local user cannot make sshd lines
        sshd(addr, 40000 + port, user="afwnobody")
    for port in range(3):
        sshd(addr, 41000 + port)
    wait_for(lambda: _reputation_events(box, addr) == 3, 20, "three events scored")
    assert box.tcp(22) == "ok"

    box.ct.ok("systemctl", "stop", UNIT)
    sshd(addr, 42000)  # while the daemon is down
    box.started()
    wait_for(lambda: _reputation_events(box, addr) == 4, 20, "the line written while down")
    reopens = _journal(box)["reopens"]
    box.ct.ok("journalctl", "--rotate")  # every file that held a line read so far is
    box.ct.ok("journalctl", "--vacuum-size=1")  # archived, then deleted
    wait_for(lambda: _journal(box)["reopens"] > reopens, 20, "reopened after the vacuum")
    assert "port 42000" not in box.ct.ok("journalctl", "-t", "sshd", "-o", "cat")  # gone
    sshd(addr, 43000)
    wait_for(lambda: box.tcp(22) == "timeout", 20, "the client blocked by the fifth line")
    assert _reputation_events(box, addr) == 5  # none read twice, none skipped
    with inside(box.lab.server):
        assert addr in {e["elem"]["val"] for e in Nft().set_elements("block_v4")}
    assert _journal(box)["threats"] == 2  # this run: the 4th and the 5th

    box.ct.ok("aitherfwd", "unblock", addr)
    box.ct.write(POLICY, good)
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: not _journal_listening(box), 20, "the journal source gone")
    assert box.tcp(22) == "ok"


def test_a_stalled_daemon_is_restarted_by_the_watchdog(box: Box) -> None:
    # The unit's 30 s watchdog made short for the test; the mechanism is the same.
    dropin = box.ct.root / WATCHDOG_DROPIN.lstrip("/")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=4s\n")
    box.ct.ok("systemctl", "daemon-reload")
    box.ct.ok("systemctl", "restart", UNIT)
    wait_for(lambda: box.ct.prop("ActiveState") == "active", 30, "aitherfwd active")
    assert box.ct.prop("WatchdogUSec") == "4s"
    old_pid, restarts = box.ct.prop("MainPID"), int(box.ct.prop("NRestarts"))

    box.ct.ok("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)
    restarted_after(box, old_pid, 40)

    assert int(box.ct.prop("NRestarts")) == restarts + 1
    journal = box.ct.ok("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")
    assert "Watchdog timeout" in journal
    assert box.tcp(22) == "ok" and box.tcp(8080) == "ok"
    dropin.unlink()
    box.ct.ok("systemctl", "daemon-reload")
    box.ct.ok("systemctl", "restart", UNIT)
    wait_for(lambda: box.ct.prop("ActiveState") == "active", 30, "aitherfwd active")


def test_a_daemon_whose_kernel_writer_dies_exits_and_is_restarted_by_systemd(box: Box) -> None:
    """Supervision end to end: the writer fails unexpectedly (the kernel-writer failpoint),
    the task group ends the process with exit 1, `Restart=on-failure` brings it back, and
    the block that was being written when it died (stored first) is enforced after all."""
    dropin = box.ct.root / FAILPOINT_DROPIN.lstrip("/")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nEnvironment=AITHERFWD_FAILPOINT=kernel-writer\n")
    box.ct.ok("systemctl", "daemon-reload")
    box.ct.ok("systemctl", "restart", UNIT)
    wait_for(lambda: box.ct.prop("ActiveState") == "active", 30, "aitherfwd active")
    dropin.unlink()  # the running daemon keeps the failpoint; its successor will not have it
    box.ct.ok("systemctl", "daemon-reload")
    old_pid, restarts = box.ct.prop("MainPID"), int(box.ct.prop("NRestarts"))

    box.ct.sh("aitherfwd", "block", box.client.v4, "--ttl", "1h", "--reason", "writer dies")
    restarted_after(box, old_pid, 40)

    assert int(box.ct.prop("NRestarts")) == restarts + 1
    journal = box.ct.ok("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")
    assert "kernel writer failed; the daemon exits" in journal
    assert "status=1/FAILURE" in journal
    assert box.client.v4 in box.ct.ok("aitherfwd", "blocks")
    assert box.tcp(22) == "timeout"
    box.ct.ok("aitherfwd", "unblock", box.client.v4)
    assert box.tcp(22) == "ok"


def test_systemd_analyze_security_scores_at_most_2(box: Box) -> None:
    out = box.ct.ok("systemd-analyze", "security", "--no-pager", UNIT)
    match = re.search(r"Overall exposure level for aitherfwd\.service: ([0-9.]+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) <= 2.0, out[-2000:]


def test_upgrading_the_package_restarts_a_running_daemon_and_keeps_the_edited_policy(
    box: Box,
) -> None:
    shutil.copy(built_deb(), box.ct.root / "root" / "aitherfwd.deb")
    old_pid = box.ct.prop("MainPID")
    box.ct.ok("dpkg", "-i", "/root/aitherfwd.deb", timeout=120)  # as an upgrade does
    restarted_after(box, old_pid, 30)
    assert "name: web" in (box.ct.root / POLICY.lstrip("/")).read_text()  # conffile kept
    assert box.ct.prop("StatusText").startswith("generation 1")  # a new process adopted it
    assert box.tcp(8080) == "ok" and box.tcp(22) == "ok"


def test_systemctl_stop_leaves_the_table_enforcing(box: Box) -> None:
    box.ct.write(POLICY, (ROOT / "packaging" / "policy.yaml").read_text())
    box.ct.ok("systemctl", "reload", UNIT)
    wait_for(lambda: box.tcp(8080) == "timeout", 20, "the default policy back")
    box.ct.ok("systemctl", "stop", UNIT)
    assert box.ct.prop("ActiveState") == "inactive"
    assert box.ct.prop("Result") == "success"
    assert box.table_in_container()
    assert box.tcp(8080) == "timeout"
    assert box.tcp(22) == "ok"


def test_aitherfwd_remove_deletes_the_table_deliberately(box: Box) -> None:
    box.ct.ok("aitherfwd", "remove", "--yes")
    assert not box.table_in_container()
    assert box.tcp(8080) == "ok"


def test_removing_the_package_stops_it_and_keeps_state_purge_removes_it(box: Box) -> None:
    box.started()
    state = box.ct.root / "var/lib/aitherfwd/state.sqlite3"
    audit = box.ct.root / "var/log/aitherfwd/audit.jsonl"
    assert state.exists() and audit.exists()

    box.ct.ok("apt-get", "-q", "-y", "remove", "aitherfwd", timeout=120)
    assert box.ct.prop("ActiveState") in ("inactive", "")  # stopped by prerm
    assert box.table_in_container()  # fail-static: removal alone does not drop the firewall
    assert state.exists() and audit.exists()
    assert (box.ct.root / POLICY.lstrip("/")).exists()  # conffiles stay until purge

    box.ct.ok("apt-get", "-q", "-y", "purge", "aitherfwd", timeout=120)
    assert not (box.ct.root / "var/lib/aitherfwd").exists()
    assert not (box.ct.root / "var/log/aitherfwd").exists()
    assert not (box.ct.root / "etc/aitherfwd").exists()
