"""The OCSF side of every audit line (layer L1, pure).

Owns: the Open Cybersecurity Schema Framework (OCSF 1.1) attributes appended to each line
after the record's own fields, computed from the record alone, so a reader can check them
(`aitherfwd/audit_check.py` recomputes and compares):

- a firewall decision (`decision` lines) is **Network Activity** (class_uid 4001, category
  4): activity Open (1) when allowed, Refuse (5) otherwise; `action_id` 1 Allowed / 2
  Denied; `disposition` Allowed / Blocked; `src_endpoint` and `dst_endpoint` with ip and
  port; `connection_info` with `protocol_name` and `direction_id`;
- a decision of the ASGI middleware (`decision` lines of origin `middleware`) is **HTTP
  Activity** (class_uid 4002, category 4, the nearest class: it judged an HTTP request, and
  its path and method decide as much as its addresses): activity = the request's method
  (Get 3, Post 6, …; Other 99 with the method as `activity_name`), `http_request` with
  `http_method` and `url.path`, `http_response.code` when refused, the endpoints and the
  disposition as for Network Activity;
- a decision of the tool-call gateway (origin `gateway`) is **API Activity** (class_uid
  6003, category 6 Application Activity, the nearest class: an agent — the `actor` —
  invokes an operation — the tool — of an API): activity Other (99, named "Tool Call"),
  `api.operation` = the tool, `actor.user.name` = the agent, `src_endpoint.ip` = the caller;
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
HTTP_ACTIVITY = (4002, "HTTP Activity", 4, "Network Activity")
API_ACTIVITY = (6003, "API Activity", 6, "Application Activity")

# activity ids
OPEN, REFUSE = 1, 5  # Network Activity
CREATE, UPDATE, CLOSE = 1, 2, 3  # Detection Finding
OTHER = 99  # any class: the source's own name is the activity_name
HTTP_METHODS = {  # HTTP Activity: the request's method (OCSF 1.1 has no Patch)
    "CONNECT": 1,
    "DELETE": 2,
    "GET": 3,
    "HEAD": 4,
    "OPTIONS": 5,
    "POST": 6,
    "PUT": 7,
    "TRACE": 8,
}
TOOL_CALL = "Tool Call"  # API Activity's activity_name for a tool call (activity Other)
ACTIVITY_NAMES = {
    NETWORK_ACTIVITY[0]: {OPEN: "Open", REFUSE: "Refuse"},
    DETECTION_FINDING[0]: {CREATE: "Create", UPDATE: "Update", CLOSE: "Close"},
    HTTP_ACTIVITY[0]: {v: k.capitalize() for k, v in HTTP_METHODS.items()},
    API_ACTIVITY[0]: {OTHER: TOOL_CALL},
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
HTTP_KEYS = (*NETWORK_KEYS[:3], "src_endpoint", "dst_endpoint", "http_request", "http_response")
API_KEYS = (*NETWORK_KEYS[:3], "src_endpoint", "actor", "api")
# every attribute this module may add, but `actor`: state-change records have a field of
# that name (the API caller); checkers take a line's OCSF keys from its own class
ALL_KEYS = frozenset(KEYS + NETWORK_KEYS + FINDING_KEYS + HTTP_KEYS + API_KEYS) - {"actor"}


def epoch_ms(timestamp: str) -> int:
    """`time` from the line's RFC 3339 `timestamp` (milliseconds), so the two always agree."""
    dt = datetime.fromisoformat(timestamp.removesuffix("Z") + "+00:00")
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _head(
    cls: tuple[int, str, int, str],
    activity: int,
    severity: int,
    time_ms: int,
    activity_name: str | None = None,
) -> dict[str, object]:
    uid, name, category, category_name = cls
    return {
        "class_uid": uid,
        "class_name": name,
        "category_uid": category,
        "category_name": category_name,
        "activity_id": activity,
        "activity_name": activity_name or ACTIVITY_NAMES[uid][activity],
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


def _disposition(out: dict[str, object], allowed: bool) -> None:
    out["action_id"] = 1 if allowed else 2
    out["disposition"] = "Allowed" if allowed else "Blocked"
    out["disposition_id"] = 1 if allowed else 2


def _severity(allowed: bool) -> int:
    return SEVERITY_INFORMATIONAL if allowed else SEVERITY_LOW


def network(f: Mapping[str, object], time_ms: int) -> dict[str, object]:
    """A decision (the `decision` record's fields, by name): Network Activity."""
    allowed = f["verdict"] == "allow"
    out = _head(NETWORK_ACTIVITY, OPEN if allowed else REFUSE, _severity(allowed), time_ms)
    _disposition(out, allowed)
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


def http(f: Mapping[str, object], time_ms: int) -> dict[str, object]:
    """A decision of the middleware on an HTTP request (the `decision` record of origin
    `middleware`, by name): HTTP Activity."""
    allowed = f["verdict"] == "allow"
    method = str(f["method"])
    activity = HTTP_METHODS.get(method, OTHER)
    name = method.capitalize() if activity == OTHER else None
    out = _head(HTTP_ACTIVITY, activity, _severity(allowed), time_ms, name)
    _disposition(out, allowed)
    out["src_endpoint"] = _endpoint(f["source_ip"], None)
    out["dst_endpoint"] = _endpoint(f["dest_ip"], f["dest_port"])
    out["http_request"] = {"http_method": method, "url": {"path": f["path"]}}
    out["http_response"] = {"code": f["status"]} if f["status"] is not None else {}
    return out


def api(f: Mapping[str, object], time_ms: int) -> dict[str, object]:
    """A decision of the gateway on a tool call (the `decision` record of origin `gateway`,
    by name): API Activity."""
    allowed = f["verdict"] == "allow"
    out = _head(API_ACTIVITY, OTHER, _severity(allowed), time_ms)
    _disposition(out, allowed)
    out["src_endpoint"] = _endpoint(f["source_ip"], None)
    out["actor"] = {"user": {"name": f["agent"]}}
    out["api"] = {"operation": f["tool"], "service": {"name": "aitherfwd-gateway"}}
    return out
