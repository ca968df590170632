"""Audit files of the gateway's and the middleware's tests, checked against the record
schema (aitherfwd/audit_records.py) as they grow.

Owns: `register(path)` — a GatewayProc's or a test middleware's audit file — and
`new_problems()`, the lines off the schema written since the last call, read from where
each file (and its rotations) was last read, so a file that lives across a module's tests
is read once in total. tests/unit/conftest.py calls it after every test; the kernel suite's
DaemonProc files are checked by tests/kernel/conftest.py (lab/daemon.py), and
`register` adds to that list too, so a gateway in a kernel test is checked there.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from aitherfwd.audit_check import validate_line
from lab import daemon

# The fields of a decision line that are the same from run to run (no time, no port the
# client's kernel chose): what a test of an exact line compares.
DECISION_STABLE = (
    "event",
    "action",
    "verdict",
    "rule_name",
    "zone",
    "source_ip",
    "dest_service",
    "reason",
    "latency_us",
    "dest_ip",
    "dest_port",
    "protocol",
    "direction",
    "kind",
    "origin",
    "class_uid",
    "category_uid",
    "activity_id",
    "type_uid",
    "severity_id",
    "action_id",
    "disposition",
    "disposition_id",
    "connection_info",
)
REGISTERED: list[Path] = []
_read: dict[Path, int] = {}  # file -> bytes already checked


def register(path: Path) -> Path:
    REGISTERED.append(path)
    daemon.AUDIT_FILES.append(path)
    return path


def new_problems() -> list[str]:
    out: list[str] = []
    for path in REGISTERED:
        for f in sorted(path.parent.glob(path.name + "*")):
            out += _check(f)
    return out


def _check(f: Path) -> list[str]:
    try:
        st = f.lstat()
    except FileNotFoundError:
        return []
    if not stat.S_ISREG(st.st_mode):
        return []
    done = _read.get(f, 0)
    if st.st_size == done:
        return []
    if st.st_size < done:
        done = 0  # rotated away and written anew
    with f.open("rb") as fh:
        fh.seek(done)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
    _read[f] = done + len(complete)
    out: list[str] = []
    for text in complete.decode("ascii", "replace").splitlines():
        if not text:
            continue
        try:
            line = json.loads(text)
        except ValueError:
            out.append(f"{f}: not JSON: {text[:80]!r}")
            continue
        out += [f"{f}: {p}" for p in validate_line(line)]
    return out
