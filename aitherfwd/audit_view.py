"""Reading the audit trail back, for people (layer L1, pure).

Owns: `Filter` (since an instant, events, a source address or prefix) and `render(line)`,
one human-readable line per audit record: timestamp, event, action, then what matters —
for a decision `verdict source → destination/protocol rule= zone= service=` (the
middleware's: `→ METHOD path`, the gateway's: `→ tool name`) and its reason; for any
other record its own fields as `key=value` (the OCSF attributes, derived
from these, are left out). Used by `aitherfwd audit tail` (cli_audit.py).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from aitherfwd import audit_ocsf as ocsf
from aitherfwd.audit_records import HEADER
from aitherfwd.policy.model import IPNetwork

MAX_VALUE = 120  # characters of one value shown


@dataclass(frozen=True, slots=True)
class Filter:
    since: float | None = None  # epoch seconds
    events: frozenset[str] = frozenset()
    source: IPNetwork | None = None

    def matches(self, line: Mapping[str, object]) -> bool:
        if self.events and line.get("event") not in self.events:
            return False
        if self.since is not None:
            ts = line.get("timestamp")
            if not isinstance(ts, str) or _epoch(ts) < self.since:
                return False
        if self.source is not None:
            addr = line.get("source_ip")
            try:
                ip = ipaddress.ip_network(str(addr), strict=False) if addr else None
            except ValueError:
                return False
            if ip is None or ip.version != self.source.version:
                return False
            return ip.subnet_of(self.source)  # type: ignore[arg-type]
        return True


def _epoch(ts: str) -> float:
    try:
        return datetime.fromisoformat(ts.removesuffix("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def parse(text: str) -> dict[str, object] | None:
    """One JSONL line, or None when it is not a JSON object."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def render(line: Mapping[str, object]) -> str:
    """One line for a terminal: control characters of any field (a hostile request path,
    a tool name) are shown escaped, never sent to the terminal."""
    head = f"{line.get('timestamp', '?')}  {line.get('event', '?')}  {line.get('action', '?')}"
    if line.get("event") == "decision":
        return printable(f"{head}  {_decision(line)}")
    rest = [
        f"{k}={_value(v)}"
        for k, v in line.items()
        if k not in HEADER and k not in ocsf.ALL_KEYS and v is not None
    ]
    return printable("  ".join([head, " ".join(rest)]) if rest else head)


def printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _decision(d: Mapping[str, object]) -> str:
    if d.get("origin") == "gateway":
        return _tags(d, f"{d.get('verdict')} {d.get('source_ip')} → tool {d.get('tool')}")
    if d.get("origin") == "middleware":
        head = (
            f"{d.get('verdict')} {d.get('source_ip')} → {d.get('method')} {d.get('path')} "
            f"(port {d.get('dest_port')}, status {d.get('status')}, count {d.get('count')})"
        )
        return _tags(d, head)
    dest = d.get("dest_ip") or "-"
    port = d.get("dest_port")
    where = f"{dest}:{port}" if port is not None else str(dest)
    return _tags(
        d,
        f"{d.get('verdict')} {d.get('source_ip')} → {where}/{d.get('protocol')} "
        f"({d.get('direction')})",
    )


def _tags(d: Mapping[str, object], head: str) -> str:
    tags = [
        f"{k}={d[k]}"
        for k in ("rule_name", "zone", "dest_service", "agent", "origin")
        if d.get(k) is not None
    ]
    if d.get("latency_us") is not None:
        tags.append(f"latency_us={d['latency_us']}")
    return f"{head} {' '.join(tags)}  {d.get('reason', '')}"


def _value(v: object) -> str:
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"
