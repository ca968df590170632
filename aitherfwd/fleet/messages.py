"""The decisions hosts share, on and off the wire (layer L1, pure).

Owns: `Decision` (a block or unblock made on one host: address or prefix, absolute expiry,
reason, origin host, a unique id), `SharedThreat` (a threat event reported on one host),
their JSON encoding and the strict decoding of what arrives (bounded size, every field
typed and checked, the address canonical), the subjects and stream names of a fleet, the
`Seen`, the bounded memory of message ids that helps make applying idempotent (batches:
fleet/batch.py; judging what arrives: daemon/fleet_inbound.py). The rules that
need this host's tables (protected ranges, live admin sessions, local blocks win) are the
service's (aitherfwd/daemon/fleet.py). No I/O; time and ids are passed in.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aitherfwd.dynamic.blockrecords import address_text, canonical_v4
from aitherfwd.errors import AitherError

VERSION = 1
MAX_MESSAGE = 4096  # bytes; anything larger is dropped unread
MAX_REASON = 256
BLOCK, UNBLOCK = "block", "unblock"
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\.[0-9a-f]{8,64}$")
HOST = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SEVERITIES = ("low", "medium", "high", "critical")
SEEN_IDS = 4096  # message ids remembered (the fleet service also keeps a stream sequence)


class BadMessage(ValueError):
    """A message that is not a decision of ours: dropped (counted), never applied."""


@dataclass(frozen=True, slots=True)
class Decision:
    id: str  # "<origin>.<random hex>": unique in the fleet, the bus's dedupe id too
    op: str  # block | unblock
    key: str  # canonical address or prefix (Block.key)
    origin: str  # the host that decided
    at: float  # when it decided (UNIX time)
    expires_at: float | None = None  # blocks: absolute expiry; None = permanent
    reason: str = ""

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (at least 1), None when permanent."""
        if self.expires_at is None:
            return None
        return max(1, math.ceil(self.expires_at - now))


@dataclass(frozen=True, slots=True)
class SharedThreat:
    id: str
    origin: str
    at: float
    type: str
    source_ip: str
    severity: str


def encode(msg: Decision | SharedThreat) -> bytes:
    if isinstance(msg, Decision):
        body: dict[str, Any] = {
            "v": VERSION,
            "id": msg.id,
            "op": msg.op,
            "key": msg.key,
            "origin": msg.origin,
            "at": msg.at,
            "expires_at": msg.expires_at,
            "reason": msg.reason,
        }
    else:
        body = {
            "v": VERSION,
            "id": msg.id,
            "op": "threat",
            "origin": msg.origin,
            "at": msg.at,
            "type": msg.type,
            "source_ip": msg.source_ip,
            "severity": msg.severity,
        }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes) -> Decision | SharedThreat:
    """The message, or BadMessage saying what is wrong with it."""
    if len(data) > MAX_MESSAGE:
        raise BadMessage(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return from_body(parse(data))


def parse(data: bytes) -> dict[str, Any]:
    """The JSON object of a version-1 fleet message (any kind), or BadMessage."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise BadMessage("not a version-1 fleet message")
    return body


def from_body(body: dict[str, Any]) -> Decision | SharedThreat:
    """A single decision or threat event from its parsed JSON object."""
    msg_id, origin = match(body, "id", ID), match(body, "origin", HOST)
    if not msg_id.startswith(origin + "."):
        raise BadMessage("the id does not name its origin")
    at, op = unix_time(body, "at"), body.get("op")
    if op == "threat":
        severity = body.get("severity")
        if severity not in SEVERITIES:
            raise BadMessage("severity must be one of " + ", ".join(SEVERITIES))
        source = key_of(body, "source_ip")
        if "/" in source:
            raise BadMessage("source_ip must be an address")
        return SharedThreat(msg_id, origin, at, match(body, "type", TYPE), source, str(severity))
    if op not in (BLOCK, UNBLOCK):
        raise BadMessage("op must be block, unblock or threat")
    expires = body.get("expires_at")
    expires_at = None if expires is None else unix_time(body, "expires_at")
    reason = check_reason(body.get("reason", ""))
    return Decision(msg_id, str(op), key_of(body, "key"), origin, at, expires_at, reason)


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise BadMessage(f"reason must be printable text of at most {MAX_REASON} characters")
    return reason


def match(body: dict[str, Any], field: str, pattern: re.Pattern[str]) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadMessage(f"{field} is missing or malformed")
    return value


def unix_time(body: dict[str, Any], field: str) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadMessage(f"{field} must be a UNIX time")
    if not 0 < value < 1e11:
        raise BadMessage(f"{field} is out of range")
    return float(value)


def key_of(body: dict[str, Any], field: str) -> str:
    return check_key(body.get(field), field)


def check_key(value: object, field: str) -> str:
    """A canonical address or prefix, or BadMessage naming `field`."""
    if not isinstance(value, str) or len(value) > 64:
        raise BadMessage(f"{field} must be an address or prefix")
    if canonical_v4(value) is not None:  # the common case, ~20x cheaper than ipaddress
        return value
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise BadMessage(f"{field} must be an address or prefix") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
        raise BadMessage(f"{field}: write IPv4-mapped addresses as IPv4")
    key = address_text(net)
    if key != value:
        raise BadMessage(f"{field} is not canonical (write {key})")
    return key


# --- subjects and streams ------------------------------------------------------------------


def decision_subject(fleet: str, host: str, key: str) -> str:
    """One subject per (origin host, address): the stream keeps only its last decision,
    and a host may be allowed to publish under its own name only."""
    return f"afw.{fleet}.d.{host}.{key.replace('.', '_')}"


def subject_host(subject: str) -> str:
    """The publishing host a subject names (`afw.<fleet>.d.<host>.…`, `afw.<fleet>.t.<host>`):
    with NATS permissions a host publishes under its own name only, so a message whose
    origin is another host's is forged."""
    parts = subject.split(".")
    return parts[3] if len(parts) >= 4 and parts[0] == "afw" else ""


def threat_subject(fleet: str, host: str) -> str:
    return f"afw.{fleet}.t.{host}"


def decisions_stream(fleet: str) -> str:
    return f"AFW_{fleet}_DECISIONS"


def threats_stream(fleet: str) -> str:
    return f"AFW_{fleet}_THREATS"


def policy_bucket(fleet: str) -> str:
    return f"AFW_{fleet}_POLICY"


def describe(msg: Decision | SharedThreat) -> str:
    """A short text for status: `block 203.0.113.7`, `threat SCAN 192.0.2.1`."""
    if isinstance(msg, SharedThreat):
        return f"threat {msg.type} {msg.source_ip}"
    return f"{msg.op} {msg.key}"


# --- judging what arrives ------------------------------------------------------------------


class Seen:
    """The last SEEN_IDS message ids, oldest forgotten first."""

    def __init__(self, size: int = SEEN_IDS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.size = size

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def add(self, msg_id: str) -> None:
        self._ids[msg_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


# --- what the bus hands over -----------------------------------------------------------------


class BusError(AitherError):
    """The bus cannot be reached or refused a request (adapters/natsbus.py): the fleet
    service retries; enforcement never waits for it."""

    code = "E-FLEET-BUS"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message from a durable consumer: `ack` after it has been applied or skipped;
    `pending` is what the consumer still has to deliver after it (its lag); `seq` its
    stream sequence (0: unknown) and `redelivered` whether it was delivered before."""

    data: bytes
    pending: int
    ack: Callable[[], Awaitable[None]]
    subject: str = ""  # where it was published: names the host allowed to publish there
    seq: int = 0
    redelivered: bool = False
