"""The lean ctnetlink decoder against kernel messages recorded in a lab namespace
(tests/unit/fixtures/netlink.json: a full dump and NEW events), checked against pyroute2's
generic decoder on the same bytes, and applied to the per-source accounting."""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path

from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from aitherfwd.adapters import ctnetlink
from aitherfwd.dynamic.ctcount import (
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    CtTable,
)

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink.json").read_text())


def _messages(datagram: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 16 <= len(datagram):
        (length,) = struct.unpack_from("=I", datagram, pos)
        if length < 16:
            break
        out.append(datagram[pos : pos + length])
        pos += (length + 3) & ~3
    return out


def _pyroute2(msg: bytes) -> tuple[int, str, int]:
    m = nfct_msg(msg)
    m.decode()
    ip = m.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_IP")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    info = m.get_attr("CTA_PROTOINFO")
    state = 0
    if info is not None and info.get_attr("CTA_PROTOINFO_TCP") is not None:
        state = info.get_attr("CTA_PROTOINFO_TCP").get_attr("CTA_PROTOINFO_TCP_STATE")
    return int(m.get_attr("CTA_ID")), str(src), int(state)


def _all(kind: str) -> list[bytes]:
    return [
        m
        for d in FIXTURES[kind]
        for m in _messages(bytes.fromhex(d))
        if struct.unpack_from("=H", m, 4)[0] in (ctnetlink.NEW, ctnetlink.DELETE)
    ]


def test_decoder_agrees_with_pyroute2_on_recorded_kernel_messages() -> None:
    msgs = _all("dump") + _all("events")
    assert len(msgs) >= 4
    for msg in msgs:
        ct_id, src, state = ctnetlink.decode(msg, 0, len(msg))
        assert src is not None
        assert (ct_id, str(ipaddress.ip_address(src)), state) == _pyroute2(msg)


def test_full_dump_counts_connections_per_source_in_both_families() -> None:
    table = CtTable()
    done = [ctnetlink.apply(bytes.fromhex(d), table) for d in FIXTURES["dump"]]
    assert done[-1] == -1  # NLMSG_DONE ends the dump
    assert table.count(ipaddress.ip_address("10.77.1.2")) == 1
    assert table.count(ipaddress.ip_address("fd77:0:0:1::2")) == 1
    assert len(table) == 2 and table.max_per_source() == 1


def test_events_are_idempotent_and_destroy_removes() -> None:
    table = CtTable()
    for d in FIXTURES["events"]:
        assert ctnetlink.apply(bytes.fromhex(d), table) >= 1
    for d in FIXTURES["events"]:  # the same NEW again (the dump saw it too) changes nothing
        ctnetlink.apply(bytes.fromhex(d), table)
    assert len(table) == 2
    for d in FIXTURES["events"]:
        destroy = bytearray(bytes.fromhex(d))
        struct.pack_into("=H", destroy, 4, ctnetlink.DELETE)
        ctnetlink.apply(bytes(destroy), table)
    assert len(table) == 0 and table.tracked == {}


def test_truncated_and_foreign_messages_are_skipped() -> None:
    msg = bytes.fromhex(FIXTURES["dump"][0])
    table = CtTable()
    ctnetlink.apply(msg[:30], table)
    ctnetlink.apply(b"\x00" * 64, table)
    assert len(table) == 0


def test_half_open_connections_are_counted_until_destroyed() -> None:
    table = CtTable()
    src = ipaddress.ip_address("10.0.0.1")
    table.add(1, src.packed, TCP_SYN_RECV)
    table.add(2, src.packed, TCP_SYN_RECV)
    table.add(3, src.packed, 3)
    assert table.half_open_over(1) == [src]
    table.remove(1)
    assert table.half_open_over(1) == [] and table.count(src) == 2
    table.remove(2)
    table.remove(3)
    table.remove(3)
    assert table.tracked == {} and table.half_open == {}


def test_a_message_that_does_not_fit_its_cached_layout_is_walked_again() -> None:
    msg = next(m for m in _all("dump") if ctnetlink.decode(m, 0, len(m))[2])  # a TCP entry
    table = CtTable()
    ctnetlink.apply(msg, table)  # caches the layout of this shape
    ct_id, src, state = ctnetlink.decode(msg, 0, len(msg))
    assert table.entries == {ct_id: src}
    odd = bytearray(msg)
    at = bytes(msg).find(ctnetlink._ID_HDR)
    struct.pack_into("=HH", odd, at, 8, 0x3FF)  # same length, but no CTA_ID any more
    other = CtTable()
    ctnetlink.apply(bytes(odd), other)
    assert other.entries == {0: src}  # read as "no id", not as whatever sits there
    assert ctnetlink.decode(bytes(odd), 0, len(odd)) == (0, src, state)


def test_a_handshake_that_completes_is_no_longer_half_open() -> None:
    table = CtTable()
    src = ipaddress.ip_address("10.0.0.1")
    for ct_id in range(1, 4):
        table.add(ct_id, src.packed, TCP_SYN_SENT)  # NEW events
    assert table.half_open == {src.packed: 3}
    table.add(1, src.packed, TCP_SYN_RECV)  # UPDATE: still in the handshake
    table.add(1, src.packed, TCP_ESTABLISHED)  # UPDATE: done
    table.add(2, src.packed, TCP_CLOSE)  # UPDATE: reset during the handshake
    table.add(3, src.packed, 0)  # an UPDATE without TCP state changes nothing
    assert table.half_open == {src.packed: 1} and table.count(src) == 3
    table.add(1, src.packed, TCP_SYN_SENT)  # a state can come back (a dump taken earlier)
    assert table.half_open == {src.packed: 2}
    for ct_id in range(1, 4):
        table.remove(ct_id)
    assert table.half_open == {} and table.tracked == {} and not table._half_ids


def test_an_update_event_carries_the_tcp_state_that_ends_the_handshake() -> None:
    new = next(m for m in _all("events") if ctnetlink.decode(m, 0, len(m))[2])  # a TCP NEW
    ct_id, src, state = ctnetlink.decode(new, 0, len(new))
    assert state == TCP_SYN_SENT
    update = bytearray(new)
    struct.pack_into("=H", update, 6, 0)  # UPDATE events are IPCTNL_MSG_CT_NEW without flags
    layout = ctnetlink._layout(new, 0, len(new))
    assert layout is not None and layout[6] > 0
    update[layout[6] + 4] = TCP_ESTABLISHED
    table = CtTable()
    ctnetlink.apply(new, table)
    assert table.half_open_over(0) == [] and sum(table.half_open.values()) == 1
    ctnetlink.apply(bytes(update), table)
    assert table.half_open == {} and table.entries == {ct_id: src}
