"""The OCSF side of every audit line (layer L1, pure).

Owns: the Open Cybersecurity Schema Framework (OCSF 1.1) attributes appended to each line
after the record's own fields, computed from the record alone, so a reader can check them
(`aitherfwd/audit_check.py` recomputes and compares):

- a firewall decision (`decision` lines) is **Network Activity** (class_uid 4001, category
  4): activity Open (1) when allowed, Refuse (5) otherwise; `action_id` 1 Allowed / 2
  Denied; `disposition` Allowed / Blocked; `src_endpoint` and `dst_endpoint` with ip and
  port; `connection_info` with `protocol_name` and `direction_id`;
- every state change (blocks, reloads, grants, …) is a **Detection Finding** (class_uid
  2004, category 2, the nearest class: a finding the firewall acted on): activity Create
  (1), Update (2) or Close (3) per record type, and `finding_info.title` = the event.

Both carry `type_uid` (class_uid × 100 + activity_id), `severity_id`, `time` (epoch
milliseconds, the line's `timestamp`) and `metadata` (product name, vendor and version; the
OCSF schema version). Must not import adapters, the daemon, or anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from aitherfwd import __version__

OCSF_VERSION = "1.1.0"
PRODUCT = {"name": "aitherfwd", "vendor_name": "aitherfwd", "version": __version__}

NETWORK_ACTIVITY = (4001, "Network Activity", 4, "Network Activity")
DETECTION_FINDING = (2004, "Detection Finding", 2, "Findings")

# activity ids
OPEN, REFUSE = 1, 5  # Network Activity
CREATE, UPDATE, CLOSE = 1, 2, 3  # Detection Finding
ACTIVITY_NAMES = {
    NETWORK_ACTIVITY[0]: {OPEN: "Open", REFUSE: "Refuse"},
    DETECTION_FINDING[0]: {CREATE: "Create", UPDATE: "Update", CLOSE: "Close"},
}
SEVERITY_INFORMATIONAL, SEVERITY_LOW, SEVERITY_MEDIUM = 1, 2, 3
DIRECTIONS = {"inbound": 1, "outbound": 2, "forward": 3}  # OCSF direction_id (3: Lateral)

# the keys this module adds to a line, in the order they are written
KEYS = (
    "class_uid",
    "class_name",
    "category_uid",
    "category_name",
    "activity_id",
    "activity_name",
    "type_uid",
    "severity_id",
    "time",
    "metadata",
)
NETWORK_KEYS = (
    "action_id",
    "disposition",
    "disposition_id",
    "src_endpoint",
    "dst_endpoint",
    "connection_info",
)
FINDING_KEYS = ("finding_info",)
ALL_KEYS = frozenset(KEYS + NETWORK_KEYS + FINDING_KEYS)


def epoch_ms(timestamp: str) -> int:
    """`time` from the line's RFC 3339 `timestamp` (milliseconds), so the two always agree."""
    dt = datetime.fromisoformat(timestamp.removesuffix("Z") + "+00:00")
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _head(
    cls: tuple[int, str, int, str], activity: int, severity: int, time_ms: int
) -> dict[str, object]:
    uid, name, category, category_name = cls
    return {
        "class_uid": uid,
        "class_name": name,
        "category_uid": category,
        "category_name": category_name,
        "activity_id": activity,
        "activity_name": ACTIVITY_NAMES[uid][activity],
        "type_uid": uid * 100 + activity,
        "severity_id": severity,
        "time": time_ms,
        "metadata": {"product": dict(PRODUCT), "version": OCSF_VERSION},
    }


def finding(event: str, action: str, activity: int, time_ms: int) -> dict[str, object]:
    """A state change: Detection Finding."""
    out = _head(DETECTION_FINDING, activity, SEVERITY_INFORMATIONAL, time_ms)
    out["finding_info"] = {"title": event, "types": [action]}
    return out


def network(f: Mapping[str, object], time_ms: int) -> dict[str, object]:
    """A decision (the `decision` record's fields, by name): Network Activity."""
    allowed = f["verdict"] == "allow"
    severity = SEVERITY_INFORMATIONAL if allowed else SEVERITY_LOW
    out = _head(NETWORK_ACTIVITY, OPEN if allowed else REFUSE, severity, time_ms)
    out["action_id"] = 1 if allowed else 2
    out["disposition"] = "Allowed" if allowed else "Blocked"
    out["disposition_id"] = 1 if allowed else 2
    out["src_endpoint"] = _endpoint(f["source_ip"], f["source_port"])
    out["dst_endpoint"] = _endpoint(f["dest_ip"], f["dest_port"])
    direction = str(f["direction"])
    out["connection_info"] = {
        "protocol_name": f["protocol"],
        "direction": direction.capitalize(),
        "direction_id": DIRECTIONS.get(direction, 0),
    }
    return out


def _endpoint(ip: object, port: object) -> dict[str, object]:
    out: dict[str, object] = {}
    if ip is not None:
        out["ip"] = ip
    if port is not None:
        out["port"] = port
    return out
