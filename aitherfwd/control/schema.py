"""Strict schemas for control-socket request bodies (layer L1, pure).

Owns: turning decoded JSON into typed requests — unknown fields, wrong types, bad
addresses and bad durations become `RequestError`s with stable codes (the API layer looks
up their HTTP status in `aitherfwd.codes`; nothing here knows HTTP).
Addresses are parsed with `ipaddress` (`::ffff:a.b.c.d` → IPv4; zone ids, leading zeros and
junk rejected). Must not import adapters or daemon code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from aitherfwd.durations import parse_duration
from aitherfwd.dynamic.blocks import address_text, canonical_v4
from aitherfwd.errors import RequestError
from aitherfwd.policy.fields import parse_cidr
from aitherfwd.policy.model import IPAddress, IPNetwork, Protocol, Severity

T = TypeVar("T")
MAX_BLOCKS_PER_REQUEST = 200_000
MAX_REASON = 512


def _object(
    value: Any, what: str, allowed: AbstractSet[str], required: AbstractSet[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object", code="E-SCHEMA")
    if value.keys() <= allowed and value.keys() >= required:  # the common case, cheaply
        return value
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise RequestError(
            f"{what}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            code="E-SCHEMA",
        )
    missing = sorted(set(required) - set(value))
    if missing:
        raise RequestError(f"{what}: missing field(s) {', '.join(missing)}", code="E-SCHEMA")
    return value


def _string(value: Any, what: str, limit: int = MAX_REASON) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a string", code="E-SCHEMA")
    if len(value) > limit or not value.isprintable():  # no control chars, no U+2028
        raise RequestError(f"{what} must be at most {limit} printable characters", code="E-SCHEMA")
    return value


def parse_address(value: Any, what: str = "address") -> IPAddress:
    text = _string(value, what, 64)
    try:
        net = parse_cidr(text)
    except ValueError as exc:
        raise RequestError(f"{what}: {exc}", code="E-ADDRESS") from None
    if net.prefixlen != net.max_prefixlen:
        raise RequestError(f"{what}: '{text}' is a prefix; give one address", code="E-ADDRESS")
    return net.network_address


def parse_network(value: Any, what: str = "address") -> IPNetwork:
    text = _string(value, what, 64)
    _, slash, length = text.partition("/")
    if slash and not (length.isascii() and length.isdigit() and str(int(length)) == length):
        raise RequestError(
            f"{what}: '{text}': the prefix length must be plain digits without a leading zero",
            code="E-ADDRESS",
        )
    try:
        return parse_cidr(text)
    except ValueError as exc:
        raise RequestError(f"{what}: {exc}", code="E-ADDRESS") from None


class BlockSpec(NamedTuple):  # a tuple: a bulk request makes 100,000 (0.2 µs each, not 0.5)
    key: str  # canonical address or prefix text (Block.key)
    ttl: int | None  # seconds; None = permanent
    reason: str


BLOCK_FIELDS = frozenset({"address", "ttl", "reason"})
BLOCK_REQUIRED = frozenset({"address"})


@functools.lru_cache(maxsize=256)
def _ttl(value: str | int) -> int:
    """Bulk requests repeat the same few TTLs 100,000 times: parse each once."""
    if isinstance(value, str) and not value.isascii():  # Arabic-Indic digits are digits, not ours
        raise ValueError(f"'{value[:32]}' is not a duration; write e.g. 30s, 15m, 1h, 7d")
    return parse_duration(value)


def parse_ttl(value: Any, what: str, example: str = "15m") -> int:
    """A TTL: seconds, or a duration in ASCII ("15m", "1h30m"); E-TTL otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RequestError(
            f'{what} must be a duration such as "{example}" or seconds', code="E-TTL"
        )
    try:
        return _ttl(value)
    except ValueError as exc:
        raise RequestError(f"{what}: {exc}", code="E-TTL") from None


def parse_block(value: Any, what: str = "block") -> BlockSpec:
    obj = _object(value, what, BLOCK_FIELDS, BLOCK_REQUIRED)
    ttl = obj.get("ttl")
    if ttl is not None:
        ttl = parse_ttl(ttl, f"{what}.ttl")
    reason = sys.intern(_string(obj.get("reason", "manual"), f"{what}.reason"))
    address = obj["address"]
    key = canonical_v4(address) if isinstance(address, str) else None
    if key is None:
        key = address_text(parse_network(address, f"{what}.address"))
    return BlockSpec(key, ttl, reason)


def _list_of(body: dict[str, Any], key: str, limit: int) -> list[Any]:
    """`body[key]`, the only field: a non-empty list of at most `limit` items."""
    _object(body, "body", {key})
    items = body[key]
    if not isinstance(items, list) or not items:
        raise RequestError(f"{key} must be a non-empty list", code="E-SCHEMA")
    if len(items) > limit:
        raise RequestError(f"at most {limit} {key} a request", code="E-TOO-MANY")
    return items


def _one_or_many(body: Any, key: str, limit: int, parse: Callable[[Any, str], T]) -> list[T]:
    """A single object, or `{key: [object, ...]}` with at most `limit` items."""
    if isinstance(body, dict) and key in body:
        items = _list_of(body, key, limit)
        return [parse(item, f"{key}[{i}]") for i, item in enumerate(items)]
    return [parse(body, "body")]


def parse_blocks(body: Any) -> list[BlockSpec]:
    """`{"address": ...}` or `{"blocks": [{...}, ...]}`. The usual item of a bulk request,
    a canonical IPv4 address with a TTL and reason seen before in the request, is taken on
    a path of its own (a dict lookup, not the checks again); every other item, and any
    item in error, goes through `parse_block` with its index in the message."""
    if not (isinstance(body, dict) and "blocks" in body):
        return _one_or_many(body, "blocks", MAX_BLOCKS_PER_REQUEST, parse_block)
    items = _list_of(body, "blocks", MAX_BLOCKS_PER_REQUEST)
    out: list[BlockSpec] = []
    known: dict[tuple[Any, Any], tuple[int | None, str]] = {}  # (ttl, reason) as sent
    for i, item in enumerate(items):
        if type(item) is dict and item.keys() <= BLOCK_FIELDS:
            address, ttl, reason = item.get("address"), item.get("ttl"), item.get("reason")
            if type(address) is str and type(ttl) in _PLAIN and type(reason) in _PLAIN:
                key = canonical_v4(address)
                parsed = known.get((ttl, reason))
                if key is not None and parsed is not None:
                    out.append(_new(BlockSpec, (key, *parsed)))
                    continue
                spec = parse_block(item, f"blocks[{i}]")
                if len(known) < 64:
                    known[ttl, reason] = (spec.ttl, spec.reason)
                out.append(spec)
                continue
        out.append(parse_block(item, f"blocks[{i}]"))
    return out


_new = tuple.__new__  # a named tuple made in C: 0.1 µs instead of its __new__'s 0.2
_PLAIN = (str, int, type(None))  # hashable JSON values a bulk item's ttl and reason may be


@dataclass(frozen=True, slots=True)
class EvaluateSpec:
    source: IPAddress
    protocol: Protocol
    dest_port: int | None
    direction: str
    dest: IPAddress | None
    path: str | None
    authenticated: bool | None
    dest_host: str | None = None  # outbound: a host name the daemon resolves
    audit: bool = False  # write a decision record of the answer
    expect: str | None = None  # a verdict (canonical) the answer is compared with


# the seed's verdict spellings, accepted as input; answers use ours (docs/daemon.md)
VERDICT_ALIASES = {"allowed": "allow", "denied": "deny", "rejected": "reject"}
VERDICTS = ("allow", "deny", "reject", "rate_limited")


EVALUATE_FIELDS = {
    "dest_host",
    "source_ip",
    "dest_port",
    "protocol",
    "direction",
    "dest_ip",
    "path",
    "authenticated",
    "audit",
    "expect",
}


def _verdict(value: Any) -> str:
    text = _string(value, "expect", 16).lower()
    text = VERDICT_ALIASES.get(text, text)
    if text not in VERDICTS:
        raise RequestError(
            f"expect must be one of {', '.join(VERDICTS)} (or allowed, denied, rejected)",
            code="E-SCHEMA",
        )
    return text


def parse_evaluate(body: Any) -> EvaluateSpec:
    outbound = isinstance(body, dict) and body.get("direction") == "outbound"
    obj = _object(body, "body", EVALUATE_FIELDS, set() if outbound else {"source_ip"})
    proto_text = obj.get("protocol", "tcp")
    try:
        proto = Protocol(_string(proto_text, "protocol", 8).lower())
    except ValueError:
        raise RequestError("protocol must be tcp, udp or icmp", code="E-SCHEMA") from None
    if proto is Protocol.ANY:
        raise RequestError("protocol must be tcp, udp or icmp", code="E-SCHEMA")
    port = obj.get("dest_port")
    if proto is Protocol.ICMP:
        if port is not None:
            raise RequestError("dest_port makes no sense with icmp", code="E-SCHEMA")
    elif isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RequestError("dest_port must be an integer 1-65535", code="E-SCHEMA")
    direction = _string(obj.get("direction", "inbound"), "direction", 16)
    if direction not in ("inbound", "outbound", "forward"):
        raise RequestError("direction must be inbound, outbound or forward", code="E-SCHEMA")
    dest = obj.get("dest_ip")
    host = obj.get("dest_host")
    if direction == "forward" and (dest is None or host is not None):
        # routed: dest_ip is the container's address (after DNAT), dest_port the published one
        raise RequestError("forward: give dest_ip (and no dest_host)", code="E-SCHEMA")
    if outbound and (dest is None) == (host is None):
        raise RequestError("outbound: give exactly one of dest_ip and dest_host", code="E-SCHEMA")
    if host is not None:
        host = _string(host, "dest_host", 253).strip().lower().removesuffix(".")
    path = obj.get("path")
    auth = obj.get("authenticated")
    if auth is not None and not isinstance(auth, bool):
        raise RequestError("authenticated must be true or false", code="E-SCHEMA")
    audit = obj.get("audit", False)
    if not isinstance(audit, bool):
        raise RequestError("audit must be true or false", code="E-SCHEMA")
    return EvaluateSpec(
        source=parse_address(obj.get("source_ip", "0.0.0.0"), "source_ip"),  # noqa: S104
        protocol=proto,
        dest_port=port,
        direction=direction,
        dest=parse_address(dest, "dest_ip") if dest is not None else None,
        path=_string(path, "path", 2048) if path is not None else None,
        authenticated=auth,
        dest_host=host,
        audit=audit,
        expect=_verdict(obj["expect"]) if "expect" in obj else None,
    )


def parse_flag_body(body: Any, flag: str) -> bool:
    """Bodies like `{"force": true}` (or empty)."""
    obj = _object(body, "body", {flag})
    value = obj.get(flag, False)
    if not isinstance(value, bool):
        raise RequestError(f"{flag} must be true or false", code="E-SCHEMA")
    return value


def network_from_path(segment: str) -> IPNetwork:
    """The address in `DELETE /v1/blocks/{address}` (already percent-decoded)."""
    return parse_network(segment, "address")


@dataclass(frozen=True, slots=True)
class ThreatSpec:
    type: str
    source: IPAddress
    severity: Severity
    detail: str
    reporter: str | None = None  # who reported it (webhooks named so are not told back)


THREAT_FIELDS = {"type", "source_ip", "severity", "detail", "observed_at", "reporter"}
MAX_EVENTS_PER_REQUEST = 100_000


def parse_threat(value: Any, what: str = "event") -> ThreatSpec:
    obj = _object(value, what, THREAT_FIELDS, {"type", "source_ip"})
    kind = _string(obj["type"], f"{what}.type", 64)
    if not kind or not all(c.isalnum() or c in "_-." for c in kind):
        raise RequestError(f"{what}.type must be letters, digits, '_', '-', '.'", code="E-SCHEMA")
    try:
        severity = Severity(_string(obj.get("severity", "medium"), f"{what}.severity", 16))
    except ValueError:
        raise RequestError(
            f"{what}.severity must be low, medium, high or critical", code="E-SCHEMA"
        ) from None
    if "observed_at" in obj:
        _string(obj["observed_at"], f"{what}.observed_at", 64)
    reporter = obj.get("reporter")
    if reporter is not None:
        reporter = sys.intern(_string(reporter, f"{what}.reporter", 64))
        if not reporter or not all(c.isalnum() or c in "_-." for c in reporter):
            raise RequestError(
                f"{what}.reporter must be letters, digits, '_', '-', '.'", code="E-SCHEMA"
            )
    return ThreatSpec(
        kind.upper(),
        parse_address(obj["source_ip"], f"{what}.source_ip"),
        severity,
        _string(obj.get("detail", ""), f"{what}.detail"),
        reporter,
    )


def parse_threats(body: Any) -> list[ThreatSpec]:
    """`{"type": ..., "source_ip": ...}` or `{"events": [{...}, ...]}`."""
    return _one_or_many(body, "events", MAX_EVENTS_PER_REQUEST, parse_threat)


EXPLAIN_QUERY = {"port", "protocol"}
MAX_EXPLAIN_PORTS = 32


def parse_explain_query(query: dict[str, str]) -> tuple[list[int], Protocol]:
    """`?port=22,443&protocol=tcp`: the ports to give verdicts for (default: admin ports)."""
    unknown = sorted(set(query) - EXPLAIN_QUERY)
    if unknown:
        raise RequestError(
            f"unknown query parameter {unknown[0]!r}: use port and protocol", code="E-SCHEMA"
        )
    try:
        proto = Protocol(query.get("protocol", "tcp").lower())
    except ValueError:
        raise RequestError("protocol must be tcp or udp", code="E-SCHEMA") from None
    if proto not in (Protocol.TCP, Protocol.UDP):
        raise RequestError("protocol must be tcp or udp", code="E-SCHEMA")
    ports: list[int] = []
    for text in filter(None, query.get("port", "").split(",")):
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise RequestError(f"port {text[:16]!r} must be an integer 1-65535", code="E-SCHEMA")
        ports.append(int(text))
    if len(ports) > MAX_EXPLAIN_PORTS:
        raise RequestError(f"at most {MAX_EXPLAIN_PORTS} ports", code="E-SCHEMA")
    return ports, proto
