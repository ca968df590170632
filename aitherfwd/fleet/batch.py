"""Batches of block decisions on the wire (layer L1, pure).

Owns: `Batch` (the blocks of one request or one reputation step of one host, as one
message), its compact JSON encoding cut into chunks that each stay far below NATS's
`max_payload` (`chunks`), the strict decoding of what arrives (`decode_any`: a single
decision, a threat event or a batch, each bounded and checked field by field like
fleet/messages.py does for single decisions), the batch subject, and the check that a
message came on the kind of subject its kind travels on.

A batch carries blocks only: unblocks are always single decisions on their address's
subject, so the stream's last message of that subject is the last word on the address,
and a batch of blocks that were lifted later cannot bring them back to a host that reads
the stream in its order (a late joiner included). Each decision of a batch has an id of
its own, `<batch id>/<index>`; a batch is applied once (by its message id). No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aitherfwd.fleet import messages as m
from aitherfwd.fleet.messages import BadMessage, Decision, SharedThreat

BATCH = "batch"
BATCH_MAX = 4096  # decisions per message: a request of 10,000 blocks is three messages
MAX_BATCH_BYTES = 256 * 1024  # a batch message at most (NATS's default max_payload: 1 MiB)
Item = tuple[str, float | None, str]  # key, absolute expiry (None: permanent), reason


@dataclass(frozen=True, slots=True)
class Batch:
    id: str  # "<origin>.<random hex>": the message id, as for a single decision
    origin: str
    at: float
    decisions: tuple[Decision, ...]  # blocks, ids "<id>/<index>"


def batch_subject(fleet: str, host: str, batch_id: str) -> str:
    """`afw.<fleet>.d.<host>.b.<hex>`: six tokens, where an address's subject has five
    (dots of an address are written `_`), under the host's own `afw.<fleet>.d.<host>.>`."""
    return f"afw.{fleet}.d.{host}.b.{batch_id.split('.', 1)[1]}"


def is_batch_subject(subject: str) -> bool:
    parts = subject.split(".")
    return len(parts) == 6 and parts[2] == "d" and parts[4] == "b"


def chunks(
    origin: str, at: float, items: Sequence[Item], new_id: Callable[[], str]
) -> list[tuple[str, bytes, int]]:
    """The messages of one batch: (message id, payload, decisions in it), at most
    BATCH_MAX decisions and MAX_BATCH_BYTES bytes each (a chunk over the byte bound, say
    of long reasons, is cut in two until it fits)."""
    out: list[tuple[str, bytes, int]] = []
    for start in range(0, len(items), BATCH_MAX):
        _fit(origin, at, list(items[start : start + BATCH_MAX]), new_id, out)
    return out


def _fit(
    origin: str,
    at: float,
    items: list[Item],
    new_id: Callable[[], str],
    out: list[tuple[str, bytes, int]],
) -> None:
    batch_id = new_id()
    data = encode(batch_id, origin, at, items)
    if len(data) <= MAX_BATCH_BYTES or len(items) == 1:
        out.append((batch_id, data, len(items)))
        return
    half = len(items) // 2
    _fit(origin, at, items[:half], new_id, out)
    _fit(origin, at, items[half:], new_id, out)


def encode(batch_id: str, origin: str, at: float, items: Sequence[Item]) -> bytes:
    """`{"v":1,"op":"batch","id","origin","at","reasons":[…],"d":[[key,expiry,reason
    index],…]}`: each distinct reason once."""
    reasons: dict[str, int] = {}
    rows = [
        [key, expires, reasons.setdefault(reason, len(reasons))] for key, expires, reason in items
    ]
    body = {
        "v": m.VERSION,
        "op": BATCH,
        "id": batch_id,
        "origin": origin,
        "at": at,
        "reasons": list(reasons),
        "d": rows,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_any(data: bytes, subject: str = "") -> Decision | SharedThreat | Batch:
    """What arrived, or BadMessage: oversized, malformed, or on a subject that is not its
    own — another host's name (forged), or a batch on an address's subject or the reverse."""
    if len(data) > MAX_BATCH_BYTES:
        raise BadMessage(f"message of {len(data)} bytes exceeds {MAX_BATCH_BYTES}")
    body = m.parse(data)
    if body.get("op") == BATCH:
        msg: Decision | SharedThreat | Batch = _batch(body)
    elif len(data) > m.MAX_MESSAGE:
        raise BadMessage(f"message of {len(data)} bytes exceeds {m.MAX_MESSAGE}")
    else:
        msg = m.from_body(body)
    if subject:
        if m.subject_host(subject) != msg.origin:
            raise BadMessage(f"origin {msg.origin} published under {subject}")
        if isinstance(msg, Batch) != is_batch_subject(subject):
            raise BadMessage(f"a {'batch' if isinstance(msg, Batch) else 'decision'} on {subject}")
    return msg


def _batch(body: dict[str, Any]) -> Batch:
    batch_id, origin = m.match(body, "id", m.ID), m.match(body, "origin", m.HOST)
    if not batch_id.startswith(origin + "."):
        raise BadMessage("the id does not name its origin")
    at = m.unix_time(body, "at")
    reasons, rows = body.get("reasons"), body.get("d")
    if not isinstance(reasons, list) or len(reasons) > BATCH_MAX:
        raise BadMessage(f"reasons must be a list of at most {BATCH_MAX}")
    for reason in reasons:
        m.check_reason(reason)
    if not isinstance(rows, list) or not 1 <= len(rows) <= BATCH_MAX:
        raise BadMessage(f"d must be a list of 1-{BATCH_MAX} decisions")
    out = []
    good: set[float] = set()  # expiries checked already: a batch mostly shares one
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) != 3:
            raise BadMessage(f"d[{i}] must be [key, expires_at, reason index]")
        key, expires, ri = row
        if expires is not None and not (type(expires) is float and expires in good):
            expires = m.unix_time({"expires_at": expires}, "expires_at")
            good.add(expires)
        if type(ri) is not int or not 0 <= ri < len(reasons):
            raise BadMessage(f"d[{i}]: the reason index is out of range")
        key = m.check_key(key, "key")
        out.append(Decision(f"{batch_id}/{i}", m.BLOCK, key, origin, at, expires, reasons[ri]))
    return Batch(batch_id, origin, at, tuple(out))


def expired(d: Decision, now: float) -> bool:
    return d.expires_at is not None and d.expires_at <= now


def describe(msg: Decision | SharedThreat | Batch) -> str:
    if isinstance(msg, Batch):
        return f"batch of {len(msg.decisions)} blocks"
    return m.describe(msg)
