"""Country databases and list files become merged prefix sets; the policy's geoip and
lists sections are validated with located errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aitherfwd.adapters.geodb import GeoReadError, read_countries, read_list
from aitherfwd.geo.ranges import Ranges, delta, parse_list
from aitherfwd.policy.parse import parse_policy
from tests.geodata import write_db


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def test_database_is_read_into_merged_ranges_per_country(tmp_path: Path) -> None:
    db = write_db(
        tmp_path / "c.mmdb",
        {"FR": ["10.77.1.0/24", "fd77::/80"], "DE": ["10.77.2.0/24", "10.77.3.0/24"]},
    )
    sets = read_countries(db)
    assert list(sets["DE"].v4.pairs()) == [(_ip("10.77.2.0"), _ip("10.77.3.255"))]
    assert sets["FR"].contains(ipaddress.ip_address("10.77.1.9"))
    assert sets["FR"].contains(ipaddress.ip_address("fd77::1"))
    assert not sets["FR"].contains(ipaddress.ip_address("10.77.2.1"))


def test_corrupt_database_is_a_read_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(GeoReadError):
        read_countries(bad)
    with pytest.raises(GeoReadError):
        read_countries(tmp_path / "missing.mmdb")


def test_list_file_parses_spamhaus_and_firehol_formats_and_counts_bad_lines() -> None:
    text = (
        "; Spamhaus DROP List\n"
        "1.10.16.0/20 ; SBL256894\n"
        "# FireHOL level1\n"
        "1.10.32.0/20\n"
        "not-a-prefix\n"
        "\n"
        "10.0.0.1/8\n"
        "2001:db8::/32\n"
        "192.0.2.7\n"
    )
    parsed = parse_list(text)
    assert parsed.lines == 4
    assert parsed.bad == 2
    assert [n for n, _ in parsed.bad_lines] == [5, 7]
    assert next(parsed.prefixes.v4.pairs()) == (_ip("1.10.16.0"), _ip("1.10.47.255"))
    assert len(parsed.prefixes.v6) == 1


def test_list_file_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GeoReadError):
        read_list(tmp_path / "nope.txt")


def test_delta_deletes_changed_ranges_and_adds_new_ones() -> None:
    old = Ranges.of(4, [(1, 10), (20, 30)])
    new = Ranges.of(4, [(1, 10), (20, 35), (40, 41)])
    d = delta(old, new)
    assert d.removed == ((20, 30),)
    assert d.added == ((20, 35), (40, 41))
    assert 41 in new and 36 not in new and 20 in new


POLICY = """\
version: 1
geoip:
  database: /var/lib/GeoIP/c.mmdb
  block_countries: [{block}]
lists:
  - {{name: drop, path: /var/lib/aitherfwd/drop.txt, action: deny}}
  - {{name: cdn, path: /var/lib/aitherfwd/cdn.txt}}
zones:
  - {{name: cloud, list: {zone_list}}}
rules:
  - name: web
    action: allow
    dest_ports: [443]
    source_countries: [{country}]
    source_lists: [{rule_list}]
"""


def _check(**kw: str) -> list[str]:
    values = {"block": "RU", "zone_list": "cdn", "country": "FR", "rule_list": "cdn", **kw}
    result = parse_policy(POLICY.format(**values), "p.yaml")
    return [d.render() for d in result.diagnostics]


def test_geo_policy_parses() -> None:
    result = parse_policy(
        POLICY.format(block="ru", zone_list="cdn", country="fr", rule_list="cdn"), "p.yaml"
    )
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    p = result.policy
    assert p.geoip is not None and p.geoip.block_countries == ("RU",)
    assert [(x.name, x.action) for x in p.lists] == [("drop", "deny"), ("cdn", "match")]
    assert p.rules[0].source_countries == ("FR",)
    assert p.zones[0].list == "cdn"


def test_unknown_country_is_located_with_did_you_mean() -> None:
    (line,) = _check(country="UK")
    assert line.startswith("p.yaml:14:")
    assert "E-COUNTRY" in line and "did you mean 'GB'" in line
    (line,) = _check(block="DEU")
    assert "p.yaml:4:" in line and "did you mean 'DE'" in line


def test_unknown_list_in_rule_or_zone_is_an_error() -> None:
    lines = _check(zone_list="cdm", rule_list="dorp")
    assert len(lines) == 2
    assert all("E-UNKNOWN-LIST" in x for x in lines)
    assert "did you mean 'cdn'" in lines[0] and "did you mean 'drop'" in lines[1]


def test_source_countries_without_geoip_section_is_an_error() -> None:
    text = "version: 1\nrules:\n  - {name: a, action: allow, source_countries: [FR]}\n"
    lines = [d.render() for d in parse_policy(text, "p.yaml").diagnostics]
    assert len(lines) == 1 and "E-NO-GEOIP" in lines[0]


def test_zone_with_both_cidrs_and_list_is_an_error() -> None:
    text = (
        "version: 1\nlists: [{name: l, path: /x}]\n"
        "zones: [{name: z, cidrs: [10.0.0.0/8], list: l}]\n"
    )
    lines = [d.render() for d in parse_policy(text, "p.yaml").diagnostics]
    assert any("E-ZONE-SOURCE" in x for x in lines)


def test_hostile_sources_are_read_errors_or_bad_lines_never_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os  # noqa: PLC0415
    import random  # noqa: PLC0415

    from aitherfwd.adapters import geodb  # noqa: PLC0415

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(GeoReadError, match="regular"):
        read_countries(fifo)  # opened without blocking, refused
    with pytest.raises(GeoReadError):
        read_list(fifo)
    with pytest.raises(GeoReadError):
        read_countries(tmp_path)  # a directory
    big = tmp_path / "big.txt"
    big.write_text("10.0.0.0/8\n" * 100)
    monkeypatch.setattr(geodb, "MAX_LIST_BYTES", 500)
    with pytest.raises(GeoReadError):
        read_list(big)
    junk = tmp_path / "junk.txt"
    noise = random.Random(7).randbytes(4096)
    junk.write_bytes(noise + b"\n" + b"A" * 1_000_000 + b"\n10.1.0.0/16\n")
    monkeypatch.setattr(geodb, "MAX_LIST_BYTES", 64 << 20)
    parsed = read_list(junk)
    assert parsed.lines == 1 and parsed.bad >= 1
    assert all(len(why) <= 120 for _, why in parsed.bad_lines)


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3)), max_size=60),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3)), max_size=60),
    st.sampled_from([2, 4, 16]),
)
def test_delta_is_the_difference_of_the_two_range_sets_whatever_the_stride(
    old: list[tuple[int, int]], new: list[tuple[int, int]], stride: int
) -> None:
    """The stride skip (equal stretches compared a slice at a time) changes nothing."""
    from aitherfwd.geo import ranges  # noqa: PLC0415

    a = Ranges.of(4, [(f * 8, f * 8 + w) for f, w in old])
    b = Ranges.of(4, [(f * 8, f * 8 + w) for f, w in new])
    saved, ranges.STRIDE = ranges.STRIDE, stride
    try:
        d = delta(a, b)
    finally:
        ranges.STRIDE = saved
    assert list(d.removed) == sorted(set(a.pairs()) - set(b.pairs()))
    assert list(d.added) == sorted(set(b.pairs()) - set(a.pairs()))
