"""Prometheus metrics of the real daemon, with real packets: a denied probe moves its rule's
counter, a ban moves the blocked-address gauge, the exposition passes `promtool check
metrics`, and a real Prometheus server scrapes the daemon and answers a query."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aitherfwd.adapters.nft import Nft
from lab import AITHERFWD
from lab.daemon import DaemonProc
from lab.netns import inside
from lab.network import Lab
from lab.wait import until
from tests.kernel.test_daemon import CONFIG, POLICY, TCP_PORTS

pytestmark = pytest.mark.kernel

METRICS = "http://127.0.0.1:9466/metrics"  # the default metrics_listen, in the server's ns
PROMETHEUS_PORT = 9490
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Lab, DaemonProc]]:
    with Lab(clients_wanted=1) as lab:
        lab.listen(TCP_PORTS)
        d = DaemonProc(lab.server, tmp_path, POLICY, CONFIG).start()
        try:
            yield lab, d
        finally:
            d.cleanup()


def get(ns: str, url: str) -> str:
    with inside(ns), urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        body: bytes = resp.read()
        return body.decode()


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(ns: str, name: str, **labels: str) -> float:
    return samples(get(ns, METRICS)).get((name, tuple(sorted(labels.items()))), -1.0)


def test_denied_probe_and_ban_move_their_metrics(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    ns, lan = lab.server, lab.clients[0]
    rule = {"rule": "default", "action": "deny"}
    before = value(ns, "aitherfwd_rule_packets_total", **rule)
    assert before >= 0, "the default policy's counter is exported"
    assert lab.tcp(lan, lan.server_v4, 9999, timeout=0.5) == "timeout"
    until(lambda: value(ns, "aitherfwd_rule_packets_total", **rule) > before, 10, "default moved")
    web = {"rule": "web", "action": "allow"}
    web_before = value(ns, "aitherfwd_rule_packets_total", **web)
    assert lab.tcp(lan, lan.server_v4, 443) == "ok"
    until(lambda: value(ns, "aitherfwd_rule_packets_total", **web) > web_before, 10, "web moved")

    manual = {"family": "ipv4", "kind": "manual"}
    assert value(ns, "aitherfwd_blocked_addresses", **manual) == 0
    d.ok("POST", "/v1/blocks", {"address": lan.v4, "ttl": 600, "reason": "test"})
    d.ok("POST", "/v1/blocks", {"address": "fd77:0:0:1::/64", "reason": "test"})
    got = samples(get(ns, METRICS))
    assert got[("aitherfwd_blocked_addresses", tuple(sorted(manual.items())))] == 1
    assert got[("aitherfwd_blocked_addresses", (("family", "ipv6"), ("kind", "manual")))] == 1
    assert got[("aitherfwd_blocks_total", (("reason", "manual"),))] == 2
    assert got[("aitherfwd_kernel_transactions_total", (("result", "ok"),))] >= 2
    assert lab.tcp(lan, lan.server_v4, 443, timeout=0.5) == "timeout"
    dropped = {"reason": "blocklist"}
    until(lambda: value(ns, "aitherfwd_dropped_packets_total", **dropped) > 0, 10, "drops")
    d.ok("DELETE", f"/v1/blocks/{lan.v4}")
    assert value(ns, "aitherfwd_blocked_addresses", **manual) == 0
    assert value(ns, "aitherfwd_unblocks_total") == 1
    # `aitherfwd counters` reads the same kernel counters (netlink, like the daemon)
    res = lab.exec(ns, [AITHERFWD, "counters", "--json"])
    assert res.returncode == 0, res.stderr
    with inside(ns):
        assert json.loads(res.stdout)["rule_web"]["packets"] == Nft().counters()["rule_web"][0]


def test_held_connections_show_in_the_conntrack_gauges(setup: tuple[Lab, DaemonProc]) -> None:
    lab, _ = setup
    lan = lab.clients[0]
    for _ in range(3):
        lab.hold_connection(lan, lan.server_v4, 443, seconds=60)
    until(lambda: value(lab.server, "aitherfwd_conntrack_entries") >= 3, 15, "entries")
    until(lambda: value(lab.server, "aitherfwd_conntrack_max_per_source") >= 3, 15, "per source")


def test_exposition_passes_promtool(setup: tuple[Lab, DaemonProc]) -> None:
    lab, d = setup
    d.ok("POST", "/v1/blocks", {"address": lab.clients[0].v4, "ttl": 60})
    d.ok("POST", "/v1/evaluate", {"source_ip": "203.0.113.9", "dest_port": 22})
    text = get(lab.server, METRICS)
    assert "aitherfwd_build_info" in text and "process_resident_memory_bytes" in text
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_real_prometheus_scrapes_the_daemon(setup: tuple[Lab, DaemonProc], tmp_path: Path) -> None:
    lab, d = setup
    assert shutil.which("prometheus"), "Debian package prometheus (make setup installs it)"
    d.ok("POST", "/v1/blocks", {"blocks": [{"address": "203.0.113.7"}, {"address": "2001:db8::9"}]})
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: aitherfwd\n"
        "    static_configs: [{targets: ['127.0.0.1:9466']}]\n"
    )
    api = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?query="
    argv = [
        "ip",
        "netns",
        "exec",
        lab.server,
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        "--storage.tsdb.retention.time=1h",
    ]
    with (tmp_path / "prometheus.log").open("wb") as log:
        prom = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        query = 'sum(aitherfwd_blocked_addresses{kind="manual"})'

        def answered() -> bool:
            try:
                body = json.loads(get(lab.server, api + urllib.parse.quote(query)))
            except OSError:
                return False
            result = body["data"]["result"]
            return bool(result) and result[0]["value"][1] == "2"

        def scraped() -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            return answered()

        until(scraped, 60, "Prometheus to scrape the daemon", interval=0.5)
        up = json.loads(get(lab.server, api + urllib.parse.quote('up{job="aitherfwd"}')))
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=5)


def test_sandbox_grants_move_their_gauge_and_counter(tmp_path: Path) -> None:
    egress = "egress:\n  default_action: deny\nsandbox: {max_ttl: 2h, default_ttl: 1h}\n"
    with Lab(clients_wanted=1) as lab:
        d = DaemonProc(lab.server, tmp_path, POLICY + egress, CONFIG).start()
        try:
            _grants_move_the_metrics(lab.server, d)
        finally:
            d.cleanup()


def _grants_move_the_metrics(ns: str, d: DaemonProc) -> None:
    labels = {"family": "ipv4"}
    assert value(ns, "aitherfwd_sandbox_grants", **labels) == 0
    d.ok("POST", "/v1/sandbox", {"destination": "10.77.200.1", "ttl": "1h", "scope": "m"})
    d.ok("POST", "/v1/sandbox", {"destination": "fd77:0:0:200::1", "ttl": "1h", "scope": "m"})
    got = samples(get(ns, METRICS))
    assert got[("aitherfwd_sandbox_grants", (("family", "ipv4"),))] == 1
    assert got[("aitherfwd_sandbox_grants", (("family", "ipv6"),))] == 1
    assert got[("aitherfwd_sandbox_grants_total", ())] == 2
    d.ok("DELETE", "/v1/sandbox/10.77.200.1")
    assert value(ns, "aitherfwd_sandbox_grants", **labels) == 0
    assert value(ns, "aitherfwd_sandbox_grants_total") == 2
