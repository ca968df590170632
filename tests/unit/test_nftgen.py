"""The hand-written NFT_MSG_GETGEN decoder, on crafted messages."""

from __future__ import annotations

import struct

import pytest

from aitherfwd.adapters import nftgen


def _msg(*attrs: tuple[int, bytes], msg_type: int = (10 << 8) | 16) -> bytes:
    body = b"".join(struct.pack("=HH", 4 + len(v), t) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    return struct.pack("=IHHII", 20 + len(body), msg_type, 0, 1, 0) + b"\2\0\0\0" + body


def test_generation_id_is_read_big_endian_among_other_attributes() -> None:
    data = _msg((2, struct.pack("!I", 4242)), (1, struct.pack("!I", 77)), (3, b"nft\0"))
    assert nftgen.parse(data) == 77


def test_error_answer_and_missing_attribute_raise_oserror() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(OSError, match="GETGEN failed"):
        nftgen.parse(err)
    with pytest.raises(OSError, match="without a generation"):
        nftgen.parse(_msg((3, b"x\0\0\0")))
