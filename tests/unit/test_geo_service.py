"""The country/list service on the fake kernel: first fill flushes and refills in one
transaction, later refreshes send only the delta, a reader error keeps the last good
contents (and is reported), and the netlink encoder writes ranges like prefixes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nftelements as ne
from aitherfwd.adapters.nftshapes import SetShape
from aitherfwd.testing import FakeDaemon, fake_daemon
from tests.geodata import write_db

POLICY = """\
version: 1
geoip: {{database: {db}, block_countries: [RU]}}
lists: [{{name: drop, path: {drop}, action: deny}}]
rules:
  - {{name: fr, action: allow, dest_ports: [443], source_countries: [FR]}}
"""


def _daemon(tmp_path: Path) -> FakeDaemon:
    db, drop = tmp_path / "c.mmdb", tmp_path / "drop.txt"
    write_db(db, {"FR": ["10.77.1.0/24"], "RU": ["10.77.2.0/24", "fd77:0:0:2::/64"]})
    drop.write_text("10.77.5.0/24\n10.77.6.0/24\n")
    return fake_daemon(tmp_path, POLICY.format(db=db, drop=drop))


def _refresh(fake: FakeDaemon, *steps: object) -> list[bool]:
    async def main() -> list[bool]:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            out = [await fake.services.geo.refresh("test")]
            for step in steps:
                if callable(step):
                    step()
                out.append(await fake.services.geo.refresh("test"))
            return out
        finally:
            task.cancel()

    try:
        return asyncio.run(main())
    finally:
        fake.services.ports.store.close()


def _ranges(fake: FakeDaemon, name: str) -> set[str]:
    return {json.dumps(v) if not isinstance(v, str) else v for v in fake.kernel.values(name)}


def test_first_fill_is_one_transaction_that_flushes_and_refills(tmp_path: Path) -> None:
    fake = _daemon(tmp_path)
    assert _refresh(fake) == [True]
    batch = fake.kernel.batches[-1]
    flushed = [c["flush"]["set"]["name"] for c in batch if "flush" in c]
    names = ["geo_blocked", "geo_fr", "list_drop"]
    assert sorted(flushed) == [f"{n}_v{f}" for n in names for f in (4, 6)]
    assert '{"range": ["10.77.5.0", "10.77.6.255"]}' in _ranges(fake, "list_drop_v4")
    assert len(fake.kernel.values("geo_blocked_v6")) == 1
    status = fake.services.geo.status()
    assert status["sets"]["geo_blocked_v4"] == 1 and status["sources"]["geoip"]["ok"]


def test_a_changed_list_is_sent_as_a_delta(tmp_path: Path) -> None:
    fake = _daemon(tmp_path)
    drop = tmp_path / "drop.txt"
    _refresh(fake, lambda: drop.write_text("10.77.5.0/24\n10.77.8.0/24\n"))
    (batch,) = fake.kernel.batches[-1:]
    verbs = [(next(iter(c)), next(iter(c.values()))["element"]["name"]) for c in batch]
    assert verbs == [("delete", "list_drop_v4"), ("add", "list_drop_v4")]
    assert _ranges(fake, "list_drop_v4") == {
        '{"range": ["10.77.5.0", "10.77.5.255"]}',
        '{"range": ["10.77.8.0", "10.77.8.255"]}',
    }


def test_a_corrupt_database_keeps_the_last_good_sets_and_is_reported(tmp_path: Path) -> None:
    fake = _daemon(tmp_path)
    db = tmp_path / "c.mmdb"
    assert _refresh(fake, lambda: db.write_bytes(b"garbage" * 100)) == [True, False]
    assert len(fake.kernel.values("geo_blocked_v4")) == 1
    source = fake.services.geo.status()["sources"]["geoip"]
    assert not source["ok"] and "GeoIP database" in source["error"]
    events = [json.loads(x)["event"] for x in fake.audit_path.read_text().splitlines()]
    assert "geo_refresh_failed" in events


def test_evaluate_knows_the_country_and_the_list(tmp_path: Path) -> None:
    fake = _daemon(tmp_path)
    _refresh(fake)

    geo = fake.services.geo
    assert geo.country_of(ipaddress.ip_address("10.77.2.9")) == "RU"
    assert geo.lists_of(ipaddress.ip_address("10.77.6.1")) == ("drop",)
    assert geo.country_of(ipaddress.ip_address("10.77.9.9")) is None


N4 = SetShape("n", 4, interval=True, with_port=False)


def test_a_range_that_is_a_prefix_encodes_like_the_prefix() -> None:
    (as_range,) = ne.messages("t", N4, "add", [{"range": ["10.0.0.0", "10.0.0.255"]}])
    (as_prefix,) = ne.messages("t", N4, "add", [{"prefix": {"addr": "10.0.0.0", "len": 24}}])
    assert as_range.attrs == as_prefix.attrs
    (top,) = ne.messages("t", N4, "add", [{"range": ["255.255.255.0", "255.255.255.255"]}])
    (top_prefix,) = ne.messages("t", N4, "add", ["255.255.255.0/24"])
    assert top.attrs == top_prefix.attrs


def test_flush_is_a_delsetelem_without_elements() -> None:
    msg = ne.flush_message("t", N4)
    assert msg.kind == nl.NFT_MSG_DELSETELEM
    kinds = [k for k, _ in nl.attributes(msg.attrs)]
    assert kinds == [ne.NFTA_SET_ELEM_LIST_TABLE, ne.NFTA_SET_ELEM_LIST_SET]


class _Geo:
    """A country per /24 and one list, as the geo service would answer."""

    def country_of(self, address: object) -> str | None:
        return {"10.77.1": "FR", "10.77.2": "RU", "10.77.3": "DE"}.get(str(address)[:7])

    def lists_of(self, address: object) -> tuple[str, ...]:
        return ("cdn",) if str(address).startswith("10.77.3.") else ()


EVAL_POLICY = """\
version: 1
geoip: {database: /x.mmdb, block_countries: [RU]}
lists: [{name: cdn, path: /cdn.txt}]
zones:
  - {name: cloud, list: cdn}
  - {name: world, cidrs: [0.0.0.0/0]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
  - {name: fr_only, dest_ports: [8443], protocol: tcp, source_countries: [FR], action: allow}
  - {name: cloud_only, zone: cloud, dest_ports: [9999], protocol: tcp, action: allow}
"""


def test_evaluator_judges_countries_lists_and_list_zones_like_the_kernel() -> None:
    from aitherfwd.evaluator import Evaluator, Request  # noqa: PLC0415
    from aitherfwd.policy.model import Protocol  # noqa: PLC0415
    from aitherfwd.policy.parse import parse_policy  # noqa: PLC0415

    policy = parse_policy(EVAL_POLICY, "p.yaml").policy
    assert policy is not None
    ev, geo = Evaluator(policy), _Geo()

    def judge(src: str, port: int) -> tuple[str, str | None, str | None, tuple[str, ...]]:
        req = Request(ipaddress.ip_address(src), Protocol.TCP, port)
        v = ev.evaluate(req, 0.0, geo=geo)
        return v.verdict, v.zone, v.country, v.lists

    assert judge("10.77.2.2", 443) == ("deny", "world", "RU", ())
    assert judge("10.77.1.2", 443) == ("allow", "world", "FR", ())
    assert judge("10.77.1.2", 8443)[0] == "allow"
    assert judge("10.77.3.2", 8443)[0] == "deny"
    assert judge("10.77.3.2", 9999) == ("allow", "cloud", "DE", ("cdn",))
    assert judge("10.77.1.2", 9999)[0] == "deny"
    # without the contents, a country rule matches nothing (like an empty kernel set)
    assert (
        ev.evaluate(Request(ipaddress.ip_address("10.77.1.2"), Protocol.TCP, 8443), 0.0).verdict
        == "deny"
    )


def test_metrics_carry_set_sizes_and_refresh_results(tmp_path: Path) -> None:
    from aitherfwd.adapters.metrics import registry, render  # noqa: PLC0415
    from aitherfwd.daemon.telemetry import Telemetry  # noqa: PLC0415

    fake = _daemon(tmp_path)
    _refresh(fake, (tmp_path / "drop.txt").unlink)
    reg, collector = registry()
    snap = Telemetry(fake.services, read_counters=dict).snapshot()
    text = render(reg, collector, snap).decode()
    assert 'aitherfwd_geo_set_elements{set="geo_blocked_v4"} 1.0' in text
    assert 'aitherfwd_geo_source_ok{source="list:drop"} 0.0' in text
    assert 'aitherfwd_geo_source_ok{source="geoip"} 1.0' in text
    assert 'aitherfwd_geo_refreshes_total{result="failed"} 1.0' in text


def test_the_range_fast_path_sends_the_bytes_of_the_generic_encoder() -> None:
    from aitherfwd.geo.elements import RangeElements  # noqa: PLC0415

    top = (1 << 32) - 1
    pairs = [(0x0A000000, 0x0A0000FF), (0x0B000000, 0x0B000005), (0xFFFFFF00, top)]
    fast = list(ne.messages("t", N4, "add", RangeElements(4, pairs)))
    slow = list(ne.messages("t", N4, "add", list(RangeElements(4, pairs))))
    assert [m.attrs for m in fast] == [m.attrs for m in slow]
    fast = list(ne.messages("t", N4, "delete", RangeElements(4, pairs)))
    slow = list(ne.messages("t", N4, "delete", list(RangeElements(4, pairs))))
    assert [m.attrs for m in fast] == [m.attrs for m in slow]
    n6 = SetShape("n6", 6, interval=True, with_port=False)
    v6 = [(1 << 120, (1 << 120) + 5)]
    assert [m.attrs for m in ne.messages("t", n6, "delete", RangeElements(6, v6))] == [
        m.attrs for m in ne.messages("t", n6, "delete", list(RangeElements(6, v6)))
    ]


def test_rule_comments_are_read_from_the_userdata_tlvs() -> None:
    from aitherfwd.adapters import nftrules  # noqa: PLC0415

    text = b"web #0123456789ab\0"
    udata = bytes([9, 2]) + b"xx" + bytes([nftrules.NFTNL_UDATA_RULE_COMMENT, len(text)]) + text
    assert nftrules.comment(udata) == "web #0123456789ab"
    assert nftrules.comment(b"") == ""
    assert nftrules.comment(bytes([0, 200]) + b"short") == "short"  # truncated: what is there


def test_a_reload_that_adds_a_list_and_a_country_fills_only_what_changed(tmp_path: Path) -> None:
    fake = _daemon(tmp_path)
    extra = tmp_path / "extra.txt"
    extra.write_text("10.77.7.0/24\n")
    policy = fake.policy_path.read_text()
    changed = policy.replace("block_countries: [RU]", "block_countries: [RU, FR]").replace(
        "action: deny}]", f"action: deny}}, {{name: extra, path: {extra}}}]"
    )

    def edit() -> None:
        fake.policy_path.write_text(changed)

    async def main() -> list[dict[str, object]]:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            await fake.services.geo.refresh("test")
            edit()
            outcome = await fake.services.generations.reload(trigger="test")
            assert outcome.result == "applied", outcome
            await fake.services.geo.refresh("test")
            return fake.kernel.batches[-1]
        finally:
            task.cancel()

    try:
        batch = asyncio.run(main())
    finally:
        fake.services.ports.store.close()
    flushed = sorted(c["flush"]["set"]["name"] for c in batch if "flush" in c)
    assert flushed == ["list_extra_v4", "list_extra_v6"]  # new sets: filled from empty
    added = {next(iter(c.values()))["element"]["name"] for c in batch if "add" in c}
    assert "geo_blocked_v4" in added  # FR joins the union: a delta
    # FR's 10.77.1.0/24 and RU's 10.77.2.0/24 are adjacent: one merged range
    assert _ranges(fake, "geo_blocked_v4") == {'{"range": ["10.77.1.0", "10.77.2.255"]}'}
