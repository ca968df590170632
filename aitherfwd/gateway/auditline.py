"""The gateway's audit line for one decision, encoded fast (layer L2 adapter).

Owns: `tool_decision_line` — the bytes `adapters.audit.encode` writes for a `ToolDecision`
record, byte for byte (a hypothesis test compares them), at about half its cost. The
general encoder reflects over the dataclass, copies every value, builds the OCSF dicts and
parses its own timestamp back for `time`. Here the timestamp's whole second is formatted
once a second, the record's fields go to the JSON encoder in one dict, and the OCSF part
is a template made once per record class, verdict and presence of an address by the real
`audit_records.ocsf_of` from marker values (so the two cannot drift), with `time`, the
address, the agent and the tool put in its holes. A record this cannot encode exactly
(params not a dict, a negative time, a template without `time` or with a marker twice)
goes through `encode`. And
`DecisionAudit`, an `AuditLog` whose decision lines take this path (every other record goes
through `encode`). Per decision the general encoder cost more than the decision itself
(docs/benchmarks-gateway.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from json.encoder import encode_basestring_ascii as _str

from aitherfwd.adapters.audit import AuditLog, encode
from aitherfwd.audit_records import AuditRecord, ToolDecision, ocsf_of, rfc3339

_FIELDS = tuple(f.name for f in fields(ToolDecision))
_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
_TIME = 1234567890123  # a `time` that appears nowhere else in a template
_IP, _AGENT, _TOOL = "\ue000ip\ue000", "\ue000agent\ue000", "\ue000tool\ue000"
_HOLES = {str(_TIME): "time", _str(_IP): "ip", _str(_AGENT): "agent", _str(_TOOL): "tool"}

Template = tuple[tuple[str, ...], tuple[str, ...]]  # text pieces, and the holes between them
_templates: dict[tuple[type[ToolDecision], bool, bool], Template | None] = {}


def _template(record: ToolDecision) -> Template | None:
    """The OCSF part of `record`'s line (without braces) as pieces around its holes, or
    None when a marker does not appear exactly once (the general encoder writes the line)."""
    sample = {name: getattr(record, name) for name in _FIELDS}
    sample.update(agent=_AGENT, tool=_TOOL)
    if record.source_ip is not None:
        sample["source_ip"] = _IP
    text = _dumps(ocsf_of(type(record), sample, _TIME))[1:-1]
    found = sorted((text.find(mark), mark) for mark in _HOLES if mark in text)
    if any(text.count(mark) != 1 for _, mark in found) or str(_TIME) not in text:
        return None
    pieces, holes, at = [], [], 0
    for pos, mark in found:
        pieces.append(text[at:pos])
        holes.append(_HOLES[mark])
        at = pos + len(mark)
    pieces.append(text[at:])
    return tuple(pieces), tuple(holes)


def _second(sec: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a whole second as `rfc3339` writes it (one entry cached:
    the second changes once a second, the calls do not)."""
    global _cached  # noqa: PLW0603  (one entry; one writer thread)
    if _cached[0] != sec:
        _cached = (sec, rfc3339(float(sec))[:19])
    return _cached[1]


_cached: tuple[int, str] = (-1, "")


def tool_decision_line(now: float, record: ToolDecision) -> bytes:
    """`adapters.audit.encode(now, record)`, faster."""
    cls = type(record)
    ip = record.source_ip
    allowed = record.verdict == "allow"
    plain = type(record.params) is dict and (ip is None or type(ip) is str)
    if not plain or now < 0:
        return encode(now, record)
    key = (cls, allowed, ip is not None)
    if key not in _templates:
        _templates[key] = _template(record)
    template = _templates[key]
    if template is None:
        return encode(now, record)
    # microseconds as `datetime.fromtimestamp` rounds them (half to even), then cut to
    # milliseconds as `isoformat(timespec="milliseconds")` does
    frac, whole = math.modf(now)
    sec, us = int(whole), round(frac * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    ms = us // 1000
    values = {
        "time": str(sec * 1000 + ms),
        "ip": _str(ip) if ip is not None else "",
        "agent": _str(record.agent),
        "tool": _str(record.tool),
    }
    pieces, holes = template
    ocsf = [pieces[0]]
    for hole, piece in zip(holes, pieces[1:], strict=True):
        ocsf += (values[hole], piece)
    own = _dumps({name: getattr(record, name) for name in _FIELDS})
    line = (
        f'{{"timestamp":"{_second(sec)}.{ms:03d}Z","event":{_str(cls.event)},'
        f'"action":{_str(cls.action)},{own[1:-1]},{"".join(ocsf)}}}\n'
    )
    return line.encode("ascii")


class DecisionAudit(AuditLog):
    """The audit log, with the gateway's decision lines encoded by `tool_decision_line`."""

    def write(self, now: float, record: AuditRecord) -> None:
        if isinstance(record, ToolDecision) and self.path is not None:
            self.write_line(tool_decision_line(now, record))
        else:
            super().write(now, record)
