"""Which address is the client (aitherfwd/asgi/clientaddr.py): forwarding headers believed only
from trusted proxies, X-Forwarded-For walked from the right, every hop form, malformed and
ambiguous headers refused, spoofing noticed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aitherfwd.asgi.clientaddr import (
    MAX_HOPS,
    Malformed,
    Trusted,
    client_address,
    header_names,
    parse_hop,
    parse_networks,
)

ip = ipaddress.ip_address
PROXY = ip("10.77.0.2")
EDGE = ip("10.77.0.3")
TRUSTED = Trusted([ipaddress.ip_network("10.77.0.0/29"), ipaddress.ip_network("fd77::/64")])
NAMES = header_names(["CF-Connecting-IP", "X-Forwarded-For", "X-Real-IP"])


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode("latin-1")) for k, v in pairs]


def client(peer: str, *pairs: tuple[str, str], names: tuple[bytes, ...] = NAMES):  # type: ignore[no-untyped-def]
    return client_address(ip(peer), h(*pairs), names, TRUSTED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:51234", "203.0.113.7"),
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ('"[2001:db8::7]:443"', "2001:db8::7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("2001:DB8::7", "2001:db8::7"),
    ],
)
def test_every_hop_form_proxies_write_parses(text: str, expected: str) -> None:
    assert parse_hop(text) == ip(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "unknown",
        "example.com",
        "203.0.113",
        "203.0.113.256",
        "0203.0.113.7",  # leading zeros: octal to some parsers
        "0x7f.0.0.1",
        "203.0.113.7:",
        "203.0.113.7:0x50",
        "203.0.113.7:123456",
        "[203.0.113.7]",  # brackets are for IPv6
        "[2001:db8::7",
        "[2001:db8::7]x",
        "[2001:db8::7]:",
        "fe80::1%eth0",  # a zone id is a link, not a client
        "[fe80::1%25eth0]:80",
        "2001:db8::7:443:",
        "1.2.3.4 5.6.7.8",
        "\x00203.0.113.7",
        "٣.1.1.1",  # non-ASCII digits
        "203.0.113.7:٣",
        "a" * 100,
    ],
)
def test_malformed_hops_are_refused(text: str) -> None:
    with pytest.raises(Malformed):
        parse_hop(text)


def test_an_untrusted_peer_is_the_client_and_its_headers_count_as_spoofed() -> None:
    found = client("198.51.100.9", ("X-Forwarded-For", "203.0.113.7"))
    assert (found.address, found.source, found.spoofed) == (ip("198.51.100.9"), "peer", True)
    assert client("198.51.100.9", ("CF-Connecting-IP", "1.1.1.1")).spoofed
    assert client("198.51.100.9", ("X-Real-IP", "1.1.1.1")).address == ip("198.51.100.9")


def test_an_untrusted_peer_without_forwarding_headers_is_not_spoofing() -> None:
    found = client("198.51.100.9", ("User-Agent", "curl"), ("Forwarded", "for=1.1.1.1"))
    assert (found.address, found.spoofed) == (ip("198.51.100.9"), False)


def test_a_trusted_peer_without_headers_is_itself_the_client() -> None:
    found = client(str(PROXY))
    assert (found.address, found.source, found.spoofed) == (PROXY, "peer", False)


def test_forwarded_for_is_walked_from_the_right_to_the_first_untrusted_hop() -> None:
    # the client forged the two leftmost entries; the proxy appended what it saw
    xff = "1.1.1.1, 8.8.8.8, 203.0.113.7"
    assert client(str(PROXY), ("X-Forwarded-For", xff)).address == ip("203.0.113.7")
    # two trusted hops: the edge appended the client, the inner proxy appended the edge
    xff = "1.1.1.1, 203.0.113.7, 10.77.0.3"
    found = client(str(PROXY), ("X-Forwarded-For", xff))
    assert (found.address, found.source) == (ip("203.0.113.7"), "x-forwarded-for")


def test_forwarded_for_of_only_trusted_hops_gives_the_leftmost() -> None:
    found = client(str(PROXY), ("X-Forwarded-For", "10.77.0.4, 10.77.0.3"))
    assert found.address == ip("10.77.0.4")


def test_forwarded_for_on_several_header_lines_is_one_list_in_order() -> None:
    found = client(
        str(PROXY),
        ("X-Forwarded-For", "1.1.1.1, 203.0.113.7"),
        ("X-Forwarded-For", "10.77.0.3"),
    )
    assert found.address == ip("203.0.113.7")


def test_forwarded_for_with_ports_brackets_and_mapped_addresses() -> None:
    xff = '"[2001:db8::9]:1234", [::ffff:10.77.0.3]:80'
    assert client(str(PROXY), ("X-Forwarded-For", xff)).address == ip("2001:db8::9")
    assert client("fd77::2", ("X-Forwarded-For", "203.0.113.7:5")).address == ip("203.0.113.7")


def test_garbage_left_of_the_client_is_never_read() -> None:
    xff = "not-an-ip, ', 203.0.113.7"
    assert client(str(PROXY), ("X-Forwarded-For", xff)).address == ip("203.0.113.7")


def test_garbage_between_trusted_hops_is_malformed_not_guessed() -> None:
    found = client(str(PROXY), ("X-Forwarded-For", "203.0.113.7, unknown, 10.77.0.3"))
    assert found.address is None
    assert found.malformed is not None and "x-forwarded-for" in found.malformed


def test_empty_forwarded_for_entries_are_skipped() -> None:
    assert client(str(PROXY), ("X-Forwarded-For", ",, 203.0.113.7 ,")).address == ip("203.0.113.7")


def test_empty_headers_fall_through_to_the_next_name_then_the_peer() -> None:
    found = client(str(PROXY), ("CF-Connecting-IP", "  "), ("X-Real-IP", "203.0.113.7"))
    assert (found.address, found.source) == (ip("203.0.113.7"), "x-real-ip")
    assert client(str(PROXY), ("X-Forwarded-For", "")).address == PROXY


def test_the_first_configured_header_present_decides() -> None:
    found = client(
        str(PROXY), ("X-Forwarded-For", "198.51.100.1"), ("CF-Connecting-IP", "203.0.113.7")
    )
    assert (found.address, found.source) == (ip("203.0.113.7"), "cf-connecting-ip")
    only_xff = client(
        str(PROXY),
        ("X-Forwarded-For", "198.51.100.1"),
        ("CF-Connecting-IP", "203.0.113.7"),
        names=header_names(["X-Forwarded-For"]),
    )
    assert only_xff.address == ip("198.51.100.1")


def test_header_names_match_in_any_case() -> None:
    headers = [(b"X-FORWARDED-FOR", b"203.0.113.7")]
    assert client_address(PROXY, headers, header_names(["X-Forwarded-For"]), TRUSTED).address == ip(
        "203.0.113.7"
    )


def test_a_single_value_header_given_twice_differently_is_malformed() -> None:
    found = client(str(PROXY), ("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "198.51.100.1"))
    assert found.address is None
    same = client(str(PROXY), ("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "203.0.113.7"))
    assert same.address == ip("203.0.113.7")


def test_a_malformed_single_value_header_is_malformed() -> None:
    assert client(str(PROXY), ("CF-Connecting-IP", "203.0.113.7, 1.1.1.1")).address is None
    assert client(str(PROXY), ("CF-Connecting-IP", "localhost")).address is None


def test_a_forwarded_for_longer_than_the_hop_limit_is_malformed() -> None:
    xff = ", ".join(["10.77.0.3"] * (MAX_HOPS + 1))
    assert client(str(PROXY), ("X-Forwarded-For", xff)).address is None
    huge = "203.0.113.7" + ", 10.77.0.3" * 2000
    assert client(str(PROXY), ("X-Forwarded-For", huge)).address is None


def test_a_mapped_peer_is_judged_as_ipv4() -> None:
    found = client("::ffff:10.77.0.2", ("X-Forwarded-For", "203.0.113.7"))
    assert found.address == ip("203.0.113.7")


def test_nobody_is_trusted_by_default() -> None:
    found = client_address(PROXY, h(("X-Forwarded-For", "203.0.113.7")), NAMES, Trusted())
    assert (found.address, found.spoofed) == (PROXY, True)


def test_trusted_proxies_entries_are_cidrs_or_zone_names() -> None:
    nets, zones = parse_networks(["10.77.0.0/29", "fd77::1", "cloudflare", "v6.only"])
    assert [str(n) for n in nets] == ["10.77.0.0/29", "fd77::1/128"]
    assert zones == ["cloudflare", "v6.only"]
    for bad in ["10.77.0.0/33", "10.0.0", "fd77::/zz", ""]:
        with pytest.raises(ValueError, match="neither a CIDR nor a zone name"):
            parse_networks([bad])


ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
)


@given(st.lists(ADDRESSES, max_size=8), st.lists(st.sampled_from(["10.77.0.3", "10.77.0.4"])))
def test_the_client_is_the_rightmost_untrusted_hop_whatever_precedes_it(
    forged: list[str], hops: list[str]
) -> None:
    xff = ", ".join([*forged, "203.0.113.7", *hops])
    assert client(str(PROXY), ("X-Forwarded-For", xff)).address == ip("203.0.113.7")


@given(st.binary(max_size=200))
def test_no_header_value_raises_or_yields_a_trusted_proxy_by_accident(value: bytes) -> None:
    found = client_address(PROXY, [(b"x-forwarded-for", value)], NAMES, TRUSTED)
    if found.address is not None and found.source != "peer":
        hops = [x for x in value.decode("latin-1").split(",") if x.strip()]
        assert parse_hop(hops[-1]) == found.address or TRUSTED(parse_hop(hops[-1]))
