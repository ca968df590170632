"""Journal entries → threat events (layer L1, pure: no I/O, no journal library).

Owns: deciding whether a journal entry (a mapping of field → text, as the journal adapter
gives it) belongs to one of the policy's `journal:` sources, trying the source's patterns
on its MESSAGE in order, and validating the `address` group as an IP address
(`::ffff:a.b.c.d` is IPv4; zone ids, prefixes and junk are not addresses). The first
pattern that matches decides; an entry gives at most one threat event. Reading the journal
is the adapter's job (adapters/journal.py), scoring the reputation ladder's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aitherfwd.policy.model import IPAddress, JournalPattern, JournalSource, Severity

MAX_MESSAGE = 4096  # characters of MESSAGE the patterns see (the rest is cut)
MAX_DETAIL = 256  # characters of the line kept as the threat event's detail


@dataclass(frozen=True, slots=True)
class JournalHit:
    source: str
    type: str
    severity: Severity
    address: IPAddress
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    source: str | None  # the source whose match the entry fits; None: no source
    hit: JournalHit | None = None
    bad_address: str | None = None  # a pattern matched, but its `address` is not an address


def parse_address(text: str) -> IPAddress | None:
    """An IP address as a pattern captured it, or None."""
    text = text.strip()
    if not text or "%" in text or "/" in text or not text.isascii():
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def fits(entry: Mapping[str, str], match: Sequence[tuple[str, Sequence[str]]]) -> bool:
    """Every field of the match has one of its values (the journal's own match rules:
    values of one field are alternatives, fields are all required)."""
    return all(entry.get(name) in values for name, values in match)


def apply_patterns(source: str, patterns: Sequence[JournalPattern], message: str) -> Verdict:
    """The first pattern that matches `message` decides."""
    message = message[:MAX_MESSAGE]
    for pattern in patterns:
        found = pattern.regex.search(message)
        if found is None:
            continue
        raw = found.group("address") or ""
        address = parse_address(raw)
        if address is None:
            return Verdict(source, bad_address=raw[:64])
        detail = f"{source}: {message[:MAX_DETAIL]}"
        return Verdict(source, JournalHit(source, pattern.type, pattern.severity, address, detail))
    return Verdict(source)


def judge(entry: Mapping[str, str], sources: Sequence[JournalSource]) -> Verdict:
    """The entry's threat event, if any: the first source whose match it fits decides."""
    for src in sources:
        if fits(entry, src.match):
            return apply_patterns(src.name, src.patterns, entry.get("MESSAGE", ""))
    return Verdict(None)


def matches_for_reader(
    sources: Sequence[JournalSource],
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]:
    """The sources' matches, one conjunction per source, deduplicated in order: what the
    adapter hands the journal so that only candidate entries reach Python."""
    out: list[tuple[tuple[str, tuple[str, ...]], ...]] = []
    for src in sources:
        if src.match not in out:
            out.append(src.match)
    return tuple(out)
