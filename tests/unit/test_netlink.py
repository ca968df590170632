"""The netlink codec: encoding, decoding against kernel messages recorded in a lab namespace
(tests/unit/fixtures/netlink.json), error acks, nfnetlink batches, and malformed input that
must only ever raise the codec's own error. No sockets, no privilege."""

from __future__ import annotations

import contextlib
import errno
import json
import random
import struct
from pathlib import Path

import pytest

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nlchannel as nlc

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink.json").read_text())
RECORDED = [bytes.fromhex(d) for kind in ("dump", "events", "nflog") for d in FIXTURES[kind]]


def _error(code: int, seq: int, *, text: str = "", orig_type: int = 0) -> bytes:
    """An NLMSG_ERROR as the kernel writes it: errno, the original header, extended ack."""
    orig = nl.header(nl.NFNL_HEADER, orig_type, nl.NLM_F_REQUEST, seq)
    flags = nl.NLM_F_CAPPED
    tlvs = b""
    if text:
        flags |= nl.NLM_F_ACK_TLVS
        tlvs = nl.attr(nl.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
    body = struct.pack("=i", -code) + orig + tlvs
    return nl.header(nl.HEADER + len(body), nl.NLMSG_ERROR, flags, seq) + body


def test_message_packs_header_and_nfgenmsg_with_res_id_in_network_order() -> None:
    attrs = nl.attr_str(1, "aitherfwd")
    msg = nl.message(0x0A13, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 7, attrs, family=1, res_id=78)
    assert struct.unpack_from("=IHHII", msg) == (len(msg), 0x0A13, 0x301, 7, 0)
    assert msg[16:20] == bytes([1, 0, 0, 78])
    assert msg[20:] == struct.pack("=HH", 14, 1) + b"aitherfwd\0" + b"\0\0"


def test_attributes_are_padded_and_nested_ones_flagged() -> None:
    inner = nl.attr_u64(2, 2**40) + nl.attr(3, b"x")
    outer = nl.nested(4, inner)
    assert len(nl.attr(3, b"x")) == 8 and len(outer) == 4 + len(inner)
    assert struct.unpack_from("=HH", outer) == (4 + len(inner), 4 | nl.NLA_F_NESTED)
    ((kind, payload),) = nl.attributes(outer)
    assert kind == 4  # NLA_F_NESTED is masked off
    assert nl.attr_map(payload) == {2: struct.pack("!Q", 2**40), 3: b"x"}
    assert nl.u64(nl.attr_map(payload)[2]) == 2**40


def test_recorded_kernel_datagrams_split_into_messages_and_attributes() -> None:
    for data in RECORDED:
        msgs = list(nl.messages(data))
        assert msgs and msgs[-1].end <= len(data)
        for msg in msgs:
            if msg.type in (nl.NLMSG_DONE, nl.NLMSG_ERROR):
                continue
            kinds = [kind for kind, _ in msg.attrs()]
            assert kinds and all(0 < k <= nl.NLA_TYPE_MASK for k in kinds)
    done = list(nl.messages(bytes.fromhex(FIXTURES["dump"][-1])))
    assert done[-1].type == nl.NLMSG_DONE


def test_error_answer_raises_with_errno_seq_and_the_kernels_message() -> None:
    (msg,) = nl.messages(_error(errno.ENOENT, 9, text="No such table"))
    with pytest.raises(nl.NetlinkError) as refused:
        nl.check(msg, "NFT_MSG_GETOBJ")
    assert refused.value.errno == errno.ENOENT and refused.value.seq == 9
    assert refused.value.kernel_message == "No such table"
    assert "NFT_MSG_GETOBJ failed" in str(refused.value)
    assert isinstance(refused.value, OSError)
    (ack,) = nl.messages(_error(0, 9))
    nl.check(ack)  # errno 0 is an ack


def test_dump_replies_are_collected_until_done_and_other_sequences_ignored() -> None:
    first = nl.message(0x0A12, nl.NLM_F_MULTI, 5, nl.attr(1, b"a\0")) + nl.message(
        0x0A12, nl.NLM_F_MULTI, 4, nl.attr(1, b"old\0")
    )
    done = nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 5)
    flags = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    replies = nlc.collect([first, done, _error(errno.EPERM, 5)], 5, flags, "dump")
    assert [m.seq for m in replies] == [5]
    assert nl.attr_map(replies[0].data, replies[0].start + nl.NFNL_HEADER, replies[0].end) == {
        1: b"a\0"
    }


def test_acked_request_ends_at_its_ack_and_a_single_answer_ends_at_itself() -> None:
    ack = _error(0, 3)
    assert nlc.collect([ack], 3, nl.NLM_F_REQUEST | nl.NLM_F_ACK, "config") == []
    with pytest.raises(nl.NetlinkError) as refused:
        nlc.collect([_error(errno.EBUSY, 3)], 3, nl.NLM_F_REQUEST | nl.NLM_F_ACK, "config")
    assert refused.value.errno == errno.EBUSY
    gen = nl.message(0x0A10, 0, 3, nl.attr_u32(1, 77))
    (answer,) = nlc.collect([gen, ack], 3, nl.NLM_F_REQUEST, "getgen")
    assert nl.u32(dict(answer.attrs())[1]) == 77
    with pytest.raises(nl.NetlinkError, match="ended early"):
        nlc.collect([], 3, nl.NLM_F_REQUEST, "getgen")


def test_batch_is_framed_by_begin_and_end_for_nftables_and_every_message_asks_an_ack() -> None:
    batch = nlc.Batch(100)
    a = batch.add(nl.NFT_MSG_NEWSETELEM, nl.attr_str(1, "aitherfwd"), family=nl.NFPROTO_INET)
    b = batch.add(nl.NFT_MSG_DELSETELEM, b"", family=nl.NFPROTO_INET, flags=nl.NLM_F_CREATE)
    assert (batch.begin_seq, a, b, batch.end_seq, batch.next_seq()) == (100, 101, 102, 103, 104)
    msgs = list(nl.messages(batch.encode()))
    assert [m.type for m in msgs] == [
        nl.NFNL_MSG_BATCH_BEGIN,
        nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, nl.NFT_MSG_NEWSETELEM),
        nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, nl.NFT_MSG_DELSETELEM),
        nl.NFNL_MSG_BATCH_END,
    ]
    assert [m.seq for m in msgs] == [100, 101, 102, 103]
    for edge in (msgs[0], msgs[-1]):
        assert edge.payload[2:4] == struct.pack("!H", nl.NFNL_SUBSYS_NFTABLES)
    assert all(m.flags & nl.NLM_F_ACK for m in msgs[1:3]) and msgs[2].flags & nl.NLM_F_CREATE
    assert msgs[1].family == nl.NFPROTO_INET
    assert batch.encode() is batch.encode()
    with pytest.raises(ValueError, match="already encoded"):
        batch.add(nl.NFT_MSG_NEWSETELEM, b"", family=nl.NFPROTO_INET)


def test_batch_acks_map_each_sequence_to_its_errno() -> None:
    batch = nlc.Batch(10)
    seqs = [batch.add(nl.NFT_MSG_NEWSETELEM, b"", family=nl.NFPROTO_INET) for _ in range(3)]
    acks = nlc.Acks(batch)
    acks.feed(_error(0, seqs[0]) + _error(errno.EEXIST, seqs[1], text="element exists"))
    assert not acks.complete
    acks.feed(_error(0, 99) + _error(0, seqs[2]))  # a stray answer is ignored
    assert acks.complete
    assert acks.errnos == {10 + 1: 0, 10 + 2: errno.EEXIST, 10 + 3: 0}
    assert acks.refused() == {seqs[1]: errno.EEXIST}
    assert acks.messages == {seqs[1]: "element exists"}


def test_a_refused_batch_begin_refuses_the_whole_batch() -> None:
    batch = nlc.Batch(1)
    batch.add(nl.NFT_MSG_NEWSETELEM, b"", family=nl.NFPROTO_INET)
    with pytest.raises(nl.NetlinkError) as refused:
        nlc.Acks(batch).feed(_error(errno.EINVAL, batch.begin_seq))
    assert refused.value.errno == errno.EINVAL and refused.value.seq == 1


def _decode_everything(data: bytes) -> None:
    for msg in nl.messages(data):
        if msg.type == nl.NLMSG_ERROR:
            nl.check(msg)
            continue
        for _, payload in msg.attrs():
            with contextlib.suppress(nl.NetlinkError):  # not every payload is nested
                for _, inner in nl.attributes(payload):
                    nl.attr_map(inner)
        nlc.Acks(nlc.Batch(1)).feed(data)


def test_truncated_or_corrupted_input_raises_only_the_codecs_error() -> None:
    rng = random.Random(13)
    samples = [*RECORDED, _error(errno.ENOENT, 1, text="no table")]
    cases = [s[:cut] for s in samples for cut in range(len(s))]
    for _ in range(3000):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(bytes(data))
    cases += [rng.randbytes(rng.randint(0, 64)) for _ in range(1000)]
    for data in cases:
        with contextlib.suppress(nl.NetlinkError):
            _decode_everything(data)
    with pytest.raises(nl.NetlinkError):
        nl.u32(b"\0\0")
    with pytest.raises(nl.NetlinkError):
        nl.error_code(b"\0" * 18, 0)
