"""The conntrack queries and cuts of adapters/ctquery.py against kernel messages recorded
in a lab namespace (tests/unit/fixtures/ctquery.json: client 10.77.1.2 / fd77:0:0:1::2 and
client 10.77.2.2 / fd77:0:0:2::2, each holding TCP sessions to ports 22 and 443 of the
server, v4 and v6): the requests encode to the bytes the kernel answered, the answers
decode, a cut deletes exactly the banned source's entries with their own tuples, an
ENOENT ack is no error and any other refusal is a `ConntrackError`."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters import ctquery
from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.adapters.conntrack import ConntrackError, NetlinkConntrack

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "ctquery.json").read_text())
A4, A6 = ipaddress.ip_address("10.77.1.2"), ipaddress.ip_address("fd77:0:0:1::2")
B4, B6 = ipaddress.ip_address("10.77.2.2"), ipaddress.ip_address("fd77:0:0:2::2")


def _datagrams(name: str) -> list[bytes]:
    return [bytes.fromhex(d) for d in FIXTURES[name]]


def _replies(name: str, seq: int) -> list[nl.Message]:
    return nlc.collect(_datagrams(name), seq, nl.NLM_F_DUMP, "test")


class FakeChannel:
    """Answers each request with recorded datagrams (renumbered to the request's seq),
    and each burst of deletes with acks made from `delete_errnos`."""

    def __init__(self, answers: list[str], delete_errnos: list[int] | None = None) -> None:
        self.answers = list(answers)
        self.delete_errnos = list(delete_errnos or [])
        self.sent: list[bytes] = []
        self.closed = False
        self._seq = 100
        self._pending: list[bytes] = []

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def request(self, data: bytes, what: str = "") -> list[nl.Message]:
        self.send(data)
        return nlc.collect(self.datagrams(), nl.NLMSGHDR.unpack_from(data)[3], 0, what)

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        for msg in nl.messages(data):
            if msg.type == ctquery.GET:
                answer = _datagrams(self.answers.pop(0))
                self._pending += [_renumber(d, msg.seq) for d in answer]
                continue
            code = self.delete_errnos.pop(0) if self.delete_errnos else 0
            ack = struct.pack("=i", -code) + data[msg.start : msg.start + nl.HEADER]
            self._pending.append(nl.header(16 + len(ack), nl.NLMSG_ERROR, 0, msg.seq) + ack)

    def datagrams(self) -> Iterator[bytes]:
        while self._pending:
            yield self._pending.pop(0)
        raise nl.NetlinkError(errno.ETIMEDOUT, "no answer")

    def close(self) -> None:
        self.closed = True


def _renumber(data: bytes, seq: int) -> bytes:
    out = bytearray(data)
    for msg in nl.messages(data):
        struct.pack_into("=I", out, msg.start + 8, seq)
    return bytes(out)


def _conntrack(channel: FakeChannel) -> NetlinkConntrack:
    ct = NetlinkConntrack()
    ct._conn = ctquery.Conn(opener=lambda: channel)  # type: ignore[arg-type,return-value]
    return ct


# --- encoding -----------------------------------------------------------------------------


def test_the_requests_encode_to_the_bytes_the_kernel_answered() -> None:
    assert ctquery.by_source(A4.packed, 1).hex() == FIXTURES["v4_source_request"]
    assert ctquery.by_source(A6.packed, 2).hex() == FIXTURES["v6_source_request"]
    kernel_v6 = ctquery.by_source(A6.packed, 4, in_kernel=True)
    assert kernel_v6.hex() == FIXTURES["v6_source_kernel_filtered_request"]
    by_port = ctquery.by_tcp_port(socket.AF_INET6, 22, 3)
    assert by_port.hex() == FIXTURES["v6_port22_request"]


def test_the_source_filter_carries_the_address_and_host_order_flags() -> None:
    msg = next(nl.messages(ctquery.by_source(A4.packed, 1)))
    assert msg.family == socket.AF_INET and msg.flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    attrs = dict(msg.attrs())
    ip = nl.attr_map(nl.attr_map(attrs[ctquery.CTA_TUPLE_ORIG])[ctquery.CTA_TUPLE_IP])
    assert ip == {ctquery.CTA_IP_V4_SRC: A4.packed}
    flags = nl.attr_map(attrs[ctquery.CTA_FILTER])[ctquery.CTA_FILTER_ORIG_FLAGS]
    assert struct.unpack("=I", flags)[0] == ctquery.FILTER_IP_SRC  # nla_get_u32: host order


def test_the_ipv6_cut_asks_for_the_family_table_not_the_kernels_inverted_address_match() -> None:
    msg = next(nl.messages(ctquery.by_source(A6.packed, 2)))
    assert msg.family == socket.AF_INET6 and list(msg.attrs()) == []


def test_a_delete_carries_the_entrys_own_tuple_zone_and_id_verbatim() -> None:
    (msg, *_) = _replies("v4_source", 1)
    entry = ctquery.decode(msg)
    assert entry is not None
    raw = msg.data[msg.start : msg.end]
    assert entry.tuple_orig in raw and entry.extra in raw  # copied, not re-encoded
    request = ctquery.delete(entry, 11)
    assert request.hex() == FIXTURES["delete_requests"][0]
    sent = next(nl.messages(request))
    assert sent.type == ctquery.DELETE and sent.flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    assert {k for k, _ in sent.attrs()} == {ctquery.CTA_TUPLE_ORIG, ctquery.CTA_ID}


# --- decoding -----------------------------------------------------------------------------


def test_a_source_dump_decodes_to_that_sources_established_tcp_entries() -> None:
    found = ctquery.entries(_replies("v4_source", 1), lambda e: True)
    assert {(e.source, e.proto, e.dport, e.state) for e in found} == {
        (A4.packed, socket.IPPROTO_TCP, 22, ctquery.TCP_CONNTRACK_ESTABLISHED),
        (A4.packed, socket.IPPROTO_TCP, 443, ctquery.TCP_CONNTRACK_ESTABLISHED),
    }
    assert all(e.family == socket.AF_INET for e in found)


def test_the_kernels_ipv6_address_filter_returns_every_other_source() -> None:
    """Recorded: asked for fd77:0:0:1::2, the kernel answered with fd77:0:0:2::2's entries
    (and none of the one asked for) — what the cut must never delete."""
    found = ctquery.entries(_replies("v6_source_kernel_filtered", 4), lambda e: True)
    assert found and {e.source for e in found} == {B6.packed}


def test_a_port_dump_decodes_the_peers_of_that_port() -> None:
    found = ctquery.entries(_replies("v6_port22", 3), lambda e: True)
    assert {e.source for e in found} == {A6.packed, B6.packed}
    assert {(e.dport, e.state) for e in found} == {(22, ctquery.TCP_CONNTRACK_ESTABLISHED)}


def test_truncated_or_foreign_messages_decode_to_nothing_or_raise_ebadmsg() -> None:
    (msg, *_) = _replies("v4_source", 1)
    bare = nl.message(ctquery.GET, 0, 1, family=socket.AF_INET)
    assert ctquery.decode(next(nl.messages(bare))) is None  # no tuple: not an entry
    raw = bytearray(msg.data[msg.start : msg.end])
    struct.pack_into("=H", raw, nl.NFNL_HEADER, 0xFFF0)  # first attribute overruns the message
    with pytest.raises(nl.NetlinkError) as info:
        ctquery.decode(next(nl.messages(bytes(raw))))
    assert info.value.errno == errno.EBADMSG


# --- the operations over a channel --------------------------------------------------------


def test_a_cut_deletes_exactly_the_sources_entries_v4_and_v6() -> None:
    channel = FakeChannel(["v4_source", "v6_source"])
    ct = _conntrack(channel)
    assert ct.delete_source(A4) == 2
    assert ct.delete_source(A6) == 2  # the v6 family table holds B6's entries too
    deletes = [m for data in channel.sent for m in nl.messages(data) if m.type == ctquery.DELETE]
    assert len(deletes) == 4
    for m in deletes:
        tup = nl.attr_map(m.payload, 4)[ctquery.CTA_TUPLE_ORIG]
        ip = nl.attr_map(nl.attr_map(tup)[ctquery.CTA_TUPLE_IP])
        assert ip.get(ctquery.CTA_IP_V4_SRC, ip.get(ctquery.CTA_IP_V6_SRC)) in (
            A4.packed,
            A6.packed,
        )


def test_a_kernel_that_answers_other_sources_gets_none_of_them_deleted() -> None:
    channel = FakeChannel(["v6_source_kernel_filtered"])
    deleted = ctquery.Conn(opener=lambda: channel).run(  # type: ignore[arg-type,return-value]
        lambda ch: ctquery.delete_source(ch, A6.packed)
    )
    assert deleted == 0
    assert not any(m.type == ctquery.DELETE for d in channel.sent for m in nl.messages(d))


def test_an_entry_gone_before_its_delete_is_not_an_error() -> None:
    channel = FakeChannel(["v4_source"], delete_errnos=[0, errno.ENOENT])
    assert _conntrack(channel).delete_source(A4) == 1


def test_recorded_acks_count_one_delete_and_one_enoent() -> None:
    acks = b"".join(bytes.fromhex(d) for d in FIXTURES["delete_acks"])
    codes = {m.seq: nl.error_code(m.data, m.start, m.end)[0] for m in nl.messages(acks)}
    assert codes == {11: 0, 12: errno.ENOENT}


def test_a_refused_delete_is_a_conntrack_error_and_the_socket_is_closed() -> None:
    channel = FakeChannel(["v4_source"], delete_errnos=[errno.EPERM, 0])
    ct = _conntrack(channel)
    with pytest.raises(ConntrackError, match="Operation not permitted") as info:
        ct.delete_source(A4)
    assert info.value.code == "E-CONNTRACK" and channel.closed


def test_a_refused_dump_is_a_conntrack_error_and_the_next_call_opens_a_new_socket() -> None:
    refusal = nl.header(36, nl.NLMSG_ERROR, 0, 0) + struct.pack("=i", -errno.EOPNOTSUPP)
    FIXTURES["_refusal"] = [(refusal + b"\0" * 16).hex()]
    opened: list[FakeChannel] = []

    def opener() -> FakeChannel:
        opened.append(FakeChannel(["_refusal"] if not opened else ["v6_port22"] * 2))
        return opened[-1]

    ct = NetlinkConntrack()
    ct._conn = ctquery.Conn(opener=opener)  # type: ignore[arg-type]
    with pytest.raises(ConntrackError, match="not supported"):
        ct.established_peers([22])
    assert opened[0].closed
    # the v4 dump of port 22 answers with the recorded v6 entries: checked anyway, kept
    assert ct.established_peers([22]) == {(A6, 22), (B6, 22)}
    assert len(opened) == 2 and not opened[1].closed


def test_no_admin_ports_ask_nothing() -> None:
    channel = FakeChannel([])
    assert _conntrack(channel).established_peers([]) == set()
    assert channel.sent == []


def test_a_dump_without_its_end_is_a_conntrack_error_not_a_partial_answer() -> None:
    FIXTURES["_no_done"] = FIXTURES["v4_source"][:1]  # the entries, never NLMSG_DONE
    channel = FakeChannel(["_no_done"])
    with pytest.raises(ConntrackError, match="no answer"):
        _conntrack(channel).delete_source(A4)
    assert not any(m.type == ctquery.DELETE for d in channel.sent for m in nl.messages(d))
    assert channel.closed
