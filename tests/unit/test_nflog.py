"""The NFLOG decoder against packets the kernel logged in a lab namespace (group 78)."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from pathlib import Path

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nflog
from aitherfwd.dynamic.detect import Denial

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink.json").read_text())


def _decode(data: bytes) -> list[Denial]:
    out: list[Denial] = []
    nflog.decode_into(data, out, nflog.NflogStats())
    return out


def test_denied_packets_decode_to_source_port_kind_and_rule() -> None:
    out = [d for hexdata in FIXTURES["nflog"] for d in _decode(bytes.fromhex(hexdata))]
    seen = {(str(d.source), d.protocol, d.port, d.kind, d.rule, str(d.dest)) for d in out}
    assert ("10.77.1.2", 6, 9999, "denied", "default", "10.77.1.1") in seen
    assert ("fd77:0:0:1::2", 6, 8111, "denied", "default", "fd77:0:0:1::1") in seen


def _packet(prefix: bytes, payload: bytes, family: int = socket.AF_INET) -> bytes:
    attrs = nl.attr(nflog.NFULA_PREFIX, prefix + b"\0") + nl.attr(nflog.NFULA_PAYLOAD, payload)
    return nl.message(nflog._PACKET_TYPE, 0, 0, attrs, family=family, res_id=78)


def test_foreign_prefixes_and_short_payloads_are_not_denials() -> None:
    ip = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    tcp = struct.pack(">HH", 40000, 25)
    assert _decode(_packet(b"afwd denied web", ip + tcp)) == [
        Denial(
            ipaddress.ip_address("10.0.0.1"),
            6,
            25,
            "denied",
            "web",
            ipaddress.ip_address("10.0.0.2"),
            sport=40000,
        )
    ]
    assert _decode(_packet(b"afwd egress default", ip + tcp))[0].kind == "egress"
    assert _decode(_packet(b"someone else", ip + tcp)) == []
    assert _decode(_packet(b"afwd denied web", ip[:10])) == []
    assert _decode(_packet(b"afwd denied web", ip + tcp)[:25]) == []


def test_config_message_binds_the_group() -> None:
    msg = nflog.config_message(78, 1, nl.attr(nflog.NFULA_CFG_CMD, b"\x01"))
    length, kind, _flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and kind == 0x0401 and seq == 1
    assert struct.unpack_from(">H", msg, 18)[0] == 78


def test_a_report_of_the_forward_hook_is_marked_forward() -> None:
    ip = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(2) + bytes([10, 0, 0, 1, 172, 17, 0, 2])
    tcp = struct.pack(">HH", 40000, 8080)
    for hook, forward in ((1, False), (2, True)):
        header = nl.attr(nflog.NFULA_PACKET_HDR, struct.pack(">HBB", 0x0800, hook, 0))
        attrs = header + nl.attr(nflog.NFULA_PREFIX, b"afwd denied web\0")
        attrs += nl.attr(nflog.NFULA_PAYLOAD, ip + tcp)
        data = nl.message(nflog._PACKET_TYPE, 0, 0, attrs, family=socket.AF_INET, res_id=78)
        (d,) = _decode(data)
        assert (d.forward, d.port, str(d.dest)) == (forward, 8080, "172.17.0.2")
