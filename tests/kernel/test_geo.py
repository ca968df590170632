"""Country and list sets with the real daemon and real packets: a blocked country is
dropped before a rule that would allow it while others pass; `source_countries` in a rule;
a zone made of a list; a list file edited while the daemon runs takes effect with no gap
for an unlisted prober; a corrupt database keeps the old sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.daemon import DaemonProc
from lab.network import Lab
from lab.wait import until
from tests.geodata import write_db

pytestmark = pytest.mark.kernel

CONFIG = '[control]\ngroup = "nogroup"\n'
POLICY = """\
version: 1
settings: {{default_policy: deny, syn_flood_threshold: 100000}}
geoip: {{database: {db}, block_countries: [RU]}}
lists:
  - {{name: drop, path: {drop}, action: deny}}
  - {{name: cdn, path: {cdn}}}
zones:
  - {{name: cloud, list: cdn}}
  - {{name: world, cidrs: [0.0.0.0/0, "::/0"]}}
rules:
  - {{name: web, dest_ports: [443], protocol: tcp, action: allow}}
  - {{name: fr_only, dest_ports: [8443], protocol: tcp, source_countries: [FR], action: allow}}
  - {{name: cloud_only, zone: cloud, dest_ports: [9999], protocol: tcp, action: allow}}
"""
COUNTRIES = {
    "FR": ["10.77.1.0/24", "fd77:0:0:1::/64"],
    "RU": ["10.77.2.0/24", "fd77:0:0:2::/64"],
    "DE": ["10.77.3.0/24", "fd77:0:0:3::/64"],
}


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(clients_wanted=3) as lab:
        lab.listen([443, 8443, 9999])
        yield lab


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    out = {"db": src / "country.mmdb", "drop": src / "drop.txt", "cdn": src / "cdn.txt"}
    write_db(out["db"], COUNTRIES)
    out["drop"].write_text("; nothing yet\n")
    out["cdn"].write_text("# the CDN's ranges\n10.77.3.0/24\nbogus line\n")
    return out


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path, files: dict[str, Path]) -> Iterator[DaemonProc]:
    policy = POLICY.format(**{k: str(v) for k, v in files.items()})
    d = DaemonProc(lab.server, tmp_path, policy, CONFIG).start()
    try:
        until(
            lambda: d.ok("GET", "/v1/status")["geo"]["sets"].get("geo_blocked_v4") == 1,
            20,
            "geo sets filled",
        )
        yield d
    finally:
        d.cleanup()


def test_countries_and_lists_are_enforced_with_real_packets(lab: Lab, daemon: DaemonProc) -> None:
    fr, ru, de = lab.clients
    # blocked country: dropped before the rule that allows 443 to everyone
    assert lab.tcp(ru, ru.server_v4, 443, timeout=0.5) == "timeout"
    assert lab.tcp(ru, ru.server_v6, 443, timeout=0.5) == "timeout"
    assert lab.tcp(fr, fr.server_v4, 443) == "ok"
    assert lab.tcp(de, de.server_v6, 443) == "ok"
    # source_countries in a rule
    assert lab.tcp(fr, fr.server_v4, 8443) == "ok"
    assert lab.tcp(fr, fr.server_v6, 8443) == "ok"
    assert lab.tcp(de, de.server_v4, 8443, timeout=0.5) == "timeout"
    # a zone made of a list: only the CDN's ranges reach 9999
    assert lab.tcp(de, de.server_v4, 9999) == "ok"
    assert lab.tcp(fr, fr.server_v4, 9999, timeout=0.5) == "timeout"
    # evaluate answers as the packets did, with the country and the list
    for client in (fr, ru, de):
        for port in (443, 8443, 9999):
            answer = daemon.post(
                "/v1/evaluate", {"source_ip": client.v4, "protocol": "tcp", "dest_port": port}
            )
            packet = lab.tcp(client, client.server_v4, port, timeout=0.5)
            assert (answer["verdict"] == "allow") == (packet == "ok"), (client, port, answer)
    ru_v6 = {"source_ip": ru.v6, "protocol": "tcp", "dest_port": 443}
    ru_answer = daemon.post("/v1/evaluate", ru_v6)
    assert ru_answer["country"] == "RU" and "blocked" in ru_answer["reason"]
    de_answer = daemon.ok("GET", f"/v1/explain/{de.v4}?port=9999")
    assert de_answer["verdicts"][0]["lists"] == ["cdn"]
    assert de_answer["verdicts"][0]["zone"] == "cloud"
    geo = daemon.ok("GET", "/v1/status")["geo"]
    assert geo["sources"]["list:cdn"]["bad_lines"] == 1
    assert geo["sources"]["list:cdn"]["bad_line_numbers"] == [3]
    assert geo["sets"]["geo_fr_v6"] == 1 and geo["sets"]["list_cdn_v4"] == 1


def test_list_edit_takes_effect_without_a_gap(
    lab: Lab, daemon: DaemonProc, files: dict[str, Path]
) -> None:
    fr, _, de = lab.clients
    results: list[str] = []
    stop = threading.Event()

    def prober() -> None:  # an unlisted source, all through the refreshes (bounded)
        for _ in range(200):
            if stop.is_set():
                return
            results.extend(lab.probe(fr, fr.server_v4, 443, count=5, timeout=1.0))

    thread = threading.Thread(target=prober)
    thread.start()
    try:
        files["drop"].write_text("; Spamhaus DROP\n10.77.3.0/25 ; SBL1\n10.77.99.0/24\n")
        until(lambda: lab.tcp(de, de.server_v4, 443, timeout=0.3) == "timeout", 15, "listed")
        files["drop"].write_text("10.77.99.0/24\n")
        until(lambda: lab.tcp(de, de.server_v4, 443, timeout=0.5) == "ok", 15, "unlisted")
    finally:
        stop.set()
        thread.join(60)
    assert results and set(results) == {"ok"}, results
    events = [e for e in daemon.audit_events() if e["event"] == "geo_refreshed"]
    assert any(e["source"] == "list:drop" and e["removed"] for e in events)


def test_corrupt_database_keeps_the_old_sets(
    lab: Lab, daemon: DaemonProc, files: dict[str, Path]
) -> None:
    _, ru, _ = lab.clients
    files["db"].write_bytes(b"\x00not a maxmind database\x00" * 100)
    until(
        lambda: not daemon.ok("GET", "/v1/status")["geo"]["sources"]["geoip"]["ok"],
        15,
        "read error",
    )
    geo = daemon.ok("GET", "/v1/status")["geo"]
    assert geo["sets"]["geo_blocked_v4"] == 1
    assert "geoip" in geo["sources"] and geo["sources"]["geoip"]["error"]
    assert lab.tcp(ru, ru.server_v4, 443, timeout=0.5) == "timeout"
    assert any(e["event"] == "geo_refresh_failed" for e in daemon.audit_events())


def test_sets_are_refilled_after_the_table_is_deleted(lab: Lab, daemon: DaemonProc) -> None:
    from aitherfwd.adapters.nft import Nft  # noqa: PLC0415
    from lab.netns import inside  # noqa: PLC0415

    fr, ru, _ = lab.clients
    with inside(lab.server):
        Nft().run([{"delete": {"table": {"family": "inet", "name": "aitherfwd"}}}])
    until(lambda: daemon.ok("GET", "/v1/status")["drift_repairs"] >= 1, 30, "drift repaired")
    until(lambda: lab.tcp(ru, ru.server_v4, 443, timeout=0.3) == "timeout", 15, "RU dropped")
    assert lab.tcp(fr, fr.server_v4, 8443) == "ok"
