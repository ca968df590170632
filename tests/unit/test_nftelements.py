"""The element encoder against the bytes libnftables 1.0.6 sends for the same elements
(captured with `strace -e sendmsg -xx nft add element …` on kernel 6.18), and its refusals
of elements a set cannot hold. No root, no kernel."""

from __future__ import annotations

import struct

import pytest

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nftelements as ne
from aitherfwd.adapters.nftshapes import SetShape
from aitherfwd.nft import builders as b

H4 = SetShape("h4", 4, interval=False, with_port=False)
H6 = SetShape("h6", 6, interval=False, with_port=False)
N4 = SetShape("n4", 4, interval=True, with_port=False)
C4 = SetShape("c4", 4, interval=True, with_port=True)

# the NFTA_SET_ELEM_LIST_ELEMENTS payloads nft sent
NFT_H4_COMMENT = bytes.fromhex(
    "280001800c000400000000000000ea600c00018008000100c00002010c000600000668656c6c6f00"
)
NFT_H6 = bytes.fromhex(
    "280001800c0004000000000000015f90180001801400010020010db8000000000000000000000001"
)
NFT_N4_PREFIX = bytes.fromhex(  # libnftnl numbers the list elements 1, 2, 3 (see below)
    "18000180"
    "08000300"
    "00000001"
    "0c000180"
    "08000100"
    "00000000"
    "1c000280"
    "0c000400"
    "000000000000ea60"
    "0c000180"
    "08000100"
    "0a000000"
    "18000380"
    "08000300"
    "00000001"
    "0c000180"
    "08000100"
    "0a000100"
)
NFT_C4 = bytes.fromhex(
    "40000180"
    "0c000400"
    "00000000000493e0"
    "10000180"
    "0c000100"
    "0a01000001bb0000"
    "10000a80"
    "0c000100"
    "0a01ffff01bb0000"
    "10000600"
    "000a73616e64626f782d7800"
)
NFT_H4_DELETE = bytes.fromhex("100001800c00018008000100c0000201")


def as_list_elem(payload: bytes) -> bytes:
    """libnftnl gives the n-th element of a list the attribute type n; the kernel walks the
    list without looking at the type, and we send NFTA_LIST_ELEM (1) for every element.
    Compare with the types made equal."""
    out = b""
    for _, start, end in nl.spans(payload):
        out += struct.pack("=HH", end - start, ne.NFTA_LIST_ELEM | nl.NLA_F_NESTED)
        out += payload[start + 4 : end] + b"\0" * (-(end - start) % 4)
    return out


def elements_payload(shape: SetShape, verb: str, elements: list[object]) -> bytes:
    (msg,) = ne.messages("t", shape, verb, elements)
    attrs = dict(nl.attributes(msg.attrs))
    assert attrs[ne.NFTA_SET_ELEM_LIST_TABLE] == b"t\0"
    assert attrs[ne.NFTA_SET_ELEM_LIST_SET] == shape.name.encode() + b"\0"
    return attrs[ne.NFTA_SET_ELEM_LIST_ELEMENTS]


def test_a_ban_with_timeout_and_comment_is_what_libnftables_sends() -> None:
    elem = {"elem": {"val": "192.0.2.1", "timeout": 60, "comment": "hello"}}
    assert elements_payload(H4, "add", [elem]) == NFT_H4_COMMENT


def test_an_ipv6_ban_takes_the_fast_path_and_the_same_bytes() -> None:
    assert elements_payload(H6, "add", [{"elem": {"val": "2001:db8::1", "timeout": 90}}]) == NFT_H6


def test_a_prefix_is_a_start_and_an_end_after_the_null_end_element() -> None:
    elem = {"elem": {"val": {"prefix": {"addr": "10.0.0.0", "len": 24}}, "timeout": 60}}
    assert elements_payload(N4, "add", [elem]) == as_list_elem(NFT_N4_PREFIX)


def test_an_address_port_grant_in_a_concatenated_interval_set_has_key_and_key_end() -> None:
    value = {"concat": [{"prefix": {"addr": "10.1.0.0", "len": 16}}, 443]}
    elem = {"elem": {"val": value, "timeout": 300, "comment": "sandbox-x"}}
    assert elements_payload(C4, "add", [elem]) == NFT_C4


def test_a_delete_carries_only_the_key() -> None:
    assert elements_payload(H4, "delete", ["192.0.2.1"]) == NFT_H4_DELETE


def test_add_create_and_delete_become_the_right_message_kinds_and_flags() -> None:
    (add,) = ne.messages("t", H4, "add", ["192.0.2.1"])
    (create,) = ne.messages("t", H4, "create", ["192.0.2.1"])
    (delete,) = ne.messages("t", H4, "delete", ["192.0.2.1"])
    assert (add.kind, add.flags) == (nl.NFT_MSG_NEWSETELEM, nl.NLM_F_CREATE)
    assert (create.kind, create.flags) == (nl.NFT_MSG_NEWSETELEM, nl.NLM_F_CREATE | nl.NLM_F_EXCL)
    assert (delete.kind, delete.flags) == (nl.NFT_MSG_DELSETELEM, 0)


def test_a_prefix_reaching_the_top_of_the_address_space_is_open_ended() -> None:
    payload = elements_payload(N4, "add", [{"prefix": {"addr": "255.255.255.0", "len": 24}}])
    elems = [p for _, p in nl.attributes(payload)]
    assert len(elems) == 2  # the null end element and the start: no end past the top
    udata = dict(nl.attributes(elems[1]))[ne.NFTA_SET_ELEM_USERDATA]
    assert udata[:2] == bytes([ne.NFTNL_UDATA_SET_ELEM_FLAGS, 4])
    assert struct.unpack("=I", udata[2:6])[0] == ne.NFTNL_SET_ELEM_F_INTERVAL_OPEN


def test_a_large_batch_is_split_into_messages_under_the_attribute_limit() -> None:
    elems = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
    msgs = list(ne.messages("t", H4, "add", elems))
    assert sum(m.elements for m in msgs) == 100_000
    assert all(len(m.attrs) < 0xFFFF for m in msgs)


@pytest.mark.parametrize(
    ("shape", "element"),
    [
        (H4, "2001:db8::1"),
        (H4, "10.0.0.0/24"),
        (H4, "not an address"),
        (N4, {"concat": ["10.0.0.1", 80]}),
        (C4, "10.0.0.1"),
        (C4, {"concat": ["10.0.0.1", 70000]}),
    ],
)
def test_elements_a_set_cannot_hold_are_refused_before_anything_is_sent(
    shape: SetShape, element: object
) -> None:
    with pytest.raises(ne.ElementError):
        list(ne.messages("t", shape, "add", [element]))


def test_shapes_come_from_libnftables_types_and_flags() -> None:
    assert SetShape.of("s", "ipv6_addr", ["interval", "timeout"]) == SetShape("s", 6, True, False)
    assert SetShape.of("s", ["ipv4_addr", "inet_service"], ["interval"]) == C4.__class__(
        "s", 4, True, True
    )
    assert SetShape.of("s", "['ipv4_addr', 'inet_service']", ()) == SetShape("s", 4, False, True)
    assert SetShape.of("s", "inet_service", ()) is None


def test_builders_and_encoder_agree_on_the_command_shape() -> None:
    cmd = b.add(b.element("h4", ["192.0.2.1"]))
    ec = b.element_command(cmd)
    assert ec is not None and ec.set_name == "h4" and ec.elements == ["192.0.2.1"]


def test_packed_elements_encode_to_the_bytes_of_their_json_form() -> None:
    """A cold start's blocks go to the kernel from their ints (PackedElements); the bytes
    are the generic encoder's of the same elements as JSON, timeouts or none, v4 and v6."""
    import ipaddress  # noqa: PLC0415

    from aitherfwd.dynamic.packedelements import PackedElements  # noqa: PLC0415

    for family, first in (
        (4, int(ipaddress.IPv4Address("10.77.0.1"))),
        (6, int(ipaddress.IPv6Address("fd77::1"))),
    ):
        shape = SetShape(f"block_v{family}", family, interval=False, with_port=False)
        packed = PackedElements(family)
        for i in range(5_000):  # more than one message's worth
            packed.append(first + i, None if i % 3 == 0 else 600 + i % 2)
        as_json = list(packed)
        assert as_json[0] == str(ipaddress.ip_address(first))
        assert as_json[1] == {"elem": {"val": str(ipaddress.ip_address(first + 1)), "timeout": 601}}
        for verb in ("add", "delete"):
            fast = list(ne.messages(shape.name, shape, verb, packed))
            slow = list(ne.messages(shape.name, shape, verb, as_json))
            assert len(fast) > 1
            assert [(m.attrs, m.elements) for m in fast] == [(m.attrs, m.elements) for m in slow]


@pytest.mark.parametrize("timeout", [None, 600])
def test_ipv4_elements_sharing_a_timeout_are_written_into_one_template(timeout: int | None) -> None:
    """A bulk request's addresses share one timeout: their elements are a repeated template
    with the addresses' bytes put in place (`_uniform_v4`); the bytes are the generic
    encoder's, message for message, for adds and deletes alike."""
    import ipaddress  # noqa: PLC0415

    from aitherfwd.dynamic.packedelements import PackedElements  # noqa: PLC0415

    shape = SetShape("block_v4", 4, interval=False, with_port=False)
    first = int(ipaddress.IPv4Address("10.77.0.1"))
    addresses = [first + i * 7919 % 65536 for i in range(9_001)]  # unsorted, 3 messages
    packed = PackedElements.uniform(4, addresses, timeout)
    as_json = list(packed)
    for verb in ("add", "delete"):
        fast = list(ne.messages(shape.name, shape, verb, packed))
        slow = list(ne.messages(shape.name, shape, verb, as_json))
        assert len(fast) > 2 and sum(m.elements for m in fast) == len(addresses)
        assert [(m.attrs, m.elements) for m in fast] == [(m.attrs, m.elements) for m in slow]
