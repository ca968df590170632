"""The gateway's fast decision line is the general encoder's line, byte for byte, and the
audit log it writes through keeps every other record on the general path."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from aitherfwd.adapters.audit import encode
from aitherfwd.audit_check import validate_line
from aitherfwd.audit_records import GatewayReloaded, ToolDecision, tool_decision
from aitherfwd.gateway.auditline import DecisionAudit, tool_decision_line
from aitherfwd.gateway.service import audit_params

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def records(draw: st.DrawFn) -> ToolDecision:
    verdict = draw(st.sampled_from(["allow", "deny", "rate_limited"]))
    return tool_decision(verdict == "allow")(
        verdict=verdict,
        rule_name=draw(st.text(max_size=20)),
        source_ip=draw(st.none() | st.sampled_from(["127.0.0.1", "::1", "10.77.0.2"])),
        dest_service=draw(st.text(max_size=30)),
        reason=draw(st.text(max_size=30)),
        latency_us=draw(st.floats(0, 1e7, allow_nan=False)),
        tool=draw(st.text(max_size=30)),
        params=audit_params(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5))),  # type: ignore[arg-type]
        allowed=verdict == "allow",
        agent=draw(st.text(max_size=10)),
        reason_class=draw(st.sampled_from(["allowed", "denied_tool", "path", "rate_limited"])),
        destination=draw(st.sampled_from(["", "example.org:443", "[fd77::1]:8443"])),
        origin="gateway",
        count=draw(st.integers(1, 10**6)),
    )


# any time, and the rounding edges just below a millisecond and a second
times = st.floats(0, 4_102_444_800, allow_nan=False) | st.sampled_from(
    [0.0, 1_796_474_661.9995, 1_796_474_661.9999996, 1_796_474_661.0004999, 1e9 + 0.0005]
)


@settings(max_examples=500, deadline=None)
@given(records(), times)
def test_a_decision_line_is_the_general_encoders_line_byte_for_byte(
    record: ToolDecision, now: float
) -> None:
    assert tool_decision_line(now, record) == encode(now, record)


def test_the_fast_line_is_a_valid_audit_line() -> None:
    record = tool_decision(False)(
        verdict="deny",
        rule_name="shell.exec",
        source_ip="127.0.0.1",
        dest_service="fs.read\u2028",
        reason="path is denied",
        latency_us=12.5,
        tool="fs.read\u2028",
        params={"path": "/etc/\npasswd", "n": [1, 2.5, None, True]},
        allowed=False,
        agent="agent-1",
        reason_class="path",
        destination="",
        origin="gateway",
    )
    raw = tool_decision_line(1_800_000_000.123, record)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1 and raw.isascii()
    line = json.loads(raw)
    assert validate_line(line) == []
    assert line["tool"] == "fs.read\u2028" and line["params"]["path"] == "/etc/\npasswd"


def test_the_decision_audit_writes_decisions_fast_and_other_records_as_before(
    tmp_path: Path,
) -> None:
    log = DecisionAudit(tmp_path / "audit.jsonl")
    decided = tool_decision(True)(
        verdict="allow",
        rule_name="t",
        source_ip=None,
        dest_service="t",
        reason="allowed by t",
        latency_us=3.0,
        tool="t",
        params={},
        allowed=True,
        agent="a",
        reason_class="allowed",
        destination="",
        origin="gateway",
    )
    reloaded = GatewayReloaded(trigger="api", accepted=True, policy_sha256="ab", errors=())
    log.write(1_800_000_000.0, decided)
    log.write(1_800_000_001.0, reloaded)
    log.close()
    expected = encode(1_800_000_000.0, decided) + encode(1_800_000_001.0, reloaded)
    assert (tmp_path / "audit.jsonl").read_bytes() == expected
