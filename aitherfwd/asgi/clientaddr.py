"""Which address is the client of an HTTP request? (layer L1, pure)

Owns: `parse_hop` (one address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
`[2001:db8::1]`, `[2001:db8::1]:443`, optionally double-quoted; `::ffff:a.b.c.d` is IPv4;
anything else — zone ids, hostnames, `unknown`, leading zeros — is malformed),
`Trusted` (the proxies whose forwarding headers are believed, by CIDR) and `client_address`,
which decides:

- a forwarding header is believed only when the direct peer is a trusted proxy; from an
  untrusted peer any forwarding header is ignored and the result says `spoofed`;
- the headers are tried in the configured order, the first one present and non-empty
  decides; `X-Forwarded-For` (every header whose name ends in `forwarded-for`) is a list,
  all of its header lines joined in order, walked from the right: trusted hops are skipped,
  the first untrusted address is the client (every hop trusted: the leftmost one);
- single-value headers (`CF-Connecting-IP`, `X-Real-IP`) given more than once with
  different values, an unparsable hop met during the walk, or a list longer than
  `MAX_HOPS` are `malformed`: the caller refuses the request (a 400) rather than guessing,
  because guessing would hand the decision to whoever wrote the header.

No I/O, no clock. Must not import adapters or the daemon.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aitherfwd.policy.model import IPAddress, IPNetwork

MAX_HOPS = 64  # entries of a forwarding list walked at most
MAX_HEADER_BYTES = 8192  # one forwarding header's value, all its lines joined
PEER = "peer"


class Malformed(ValueError):
    """A forwarding header that cannot be read safely."""


def _normalise(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_hop(text: str) -> IPAddress:
    """One hop of a forwarding header; raises Malformed."""
    hop = text.strip()
    if len(hop) >= 2 and hop[0] == hop[-1] == '"':
        hop = hop[1:-1].strip()
    if not hop or len(hop) > 64:
        raise Malformed(f"not an address: {text[:80]!r}")
    if hop.startswith("["):
        end = hop.find("]")
        if end < 0 or (end + 1 < len(hop) and not _is_port(hop[end + 1 :])):
            raise Malformed(f"not an address: {text[:80]!r}")
        host = hop[1:end]
        if ":" not in host:
            raise Malformed(f"brackets around a non-IPv6 address: {text[:80]!r}")
    elif hop.count(":") == 1:  # IPv4 with a port
        host, _, port = hop.partition(":")
        if not _is_port(":" + port):
            raise Malformed(f"not an address: {text[:80]!r}")
    else:
        host = hop
    if "%" in host:
        raise Malformed(f"an address with a zone id is not a client: {text[:80]!r}")
    try:
        return parse_address(host)
    except ValueError:
        raise Malformed(f"not an address: {text[:80]!r}") from None


@functools.lru_cache(maxsize=8192)
def parse_address(text: str) -> IPAddress:
    """`ipaddress.ip_address`, normalised, remembered: proxies and clients repeat, and a
    parse costs more than the whole verdict (ValueError is not remembered)."""
    return _normalise(ipaddress.ip_address(text))


def _is_port(suffix: str) -> bool:
    digits = suffix[1:]
    return suffix.startswith(":") and 0 < len(digits) <= 5 and digits.isascii() and digits.isdigit()


class Trusted:
    """Trusted proxies: the peers whose forwarding headers are believed."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)
        self._v4 = tuple(n for n in self.networks if n.version == 4)
        self._v6 = tuple(n for n in self.networks if n.version == 6)

    def __call__(self, address: IPAddress) -> bool:
        nets = self._v4 if address.version == 4 else self._v6
        return any(address in n for n in nets)

    def __bool__(self) -> bool:
        return bool(self.networks)


@dataclass(frozen=True, slots=True)
class Client:
    """The verdict on a request's origin: `address` (None when `malformed`), where it came
    from (`peer` or the header's name), whether an untrusted peer sent forwarding headers."""

    address: IPAddress | None
    source: str
    spoofed: bool = False
    malformed: str | None = None


Headers = Sequence[tuple[bytes, bytes]]


def header_names(names: Iterable[str]) -> tuple[bytes, ...]:
    """Header names as `client_address` takes them: lower-case bytes, in order."""
    return tuple(n.strip().lower().encode("latin-1") for n in names)


def client_address(
    peer: IPAddress,
    headers: Headers,
    wanted: tuple[bytes, ...],
    trusted: Callable[[IPAddress], bool],
) -> Client:
    """The client of a request that arrived from `peer` with `headers` (ASGI's raw pairs).
    `wanted`: the forwarding headers to believe, in order, as `header_names` gives them."""
    peer = _normalise(peer)
    found: dict[bytes, list[str]] = {}
    for key, value in headers:
        name = key.lower()
        if name in wanted:
            found.setdefault(name, []).append(value.decode("latin-1"))
    if not found:
        return Client(peer, PEER)
    if not trusted(peer):
        return Client(peer, PEER, spoofed=True)
    for name in wanted:
        lines = [line for line in found.get(name, []) if line.strip()]
        if not lines:
            continue
        label = name.decode("latin-1")
        try:
            listed = name.endswith(b"forwarded-for")
            address = _walk(lines, trusted) if listed else _single(lines)
        except Malformed as exc:
            return Client(None, label, malformed=f"{label}: {exc}")
        return Client(address, label)
    return Client(peer, PEER)


def _single(lines: list[str]) -> IPAddress:
    values = {parse_hop(line) for line in lines}
    if len(values) > 1:
        raise Malformed("given more than once with different values")
    return values.pop()


def _walk(lines: list[str], trusted: Callable[[IPAddress], bool]) -> IPAddress:
    joined = ",".join(lines)
    if len(joined) > MAX_HEADER_BYTES:
        raise Malformed(f"longer than {MAX_HEADER_BYTES} bytes")
    hops = [h for h in joined.split(",") if h.strip()]
    last: IPAddress | None = None
    for walked, hop in enumerate(reversed(hops)):
        if walked >= MAX_HOPS:
            raise Malformed(f"more than {MAX_HOPS} trusted hops")
        address = parse_hop(hop)
        if not trusted(address):
            return address
        last = address
    if last is None:
        raise Malformed("no address")
    return last


def parse_networks(items: Iterable[str]) -> tuple[list[IPNetwork], list[str]]:
    """`trusted_proxies` entries: (CIDRs and addresses, zone names). Raises ValueError for an
    entry that looks like an address but is not one."""
    nets: list[IPNetwork] = []
    zones: list[str] = []
    for item in items:
        text = item.strip()
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            if not text or "/" in text or ":" in text or text.replace(".", "").isdigit():
                raise ValueError(f"{item!r} is neither a CIDR nor a zone name") from None
            zones.append(text)
    return nets, zones
