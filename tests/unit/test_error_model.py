"""One error model: coded errors from the pure core, the status looked up only by the API,
a kernel refusal answered 409 with the kernel's message, and one renderer of diagnostics for
the CLI, the API, the log and systemd STATUS=."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from click.testing import CliRunner

from aitherfwd import cli_client
from aitherfwd.adapters.control_server import HttpRequest, Peer
from aitherfwd.audit_records import AuditRecord, as_json
from aitherfwd.cli import main
from aitherfwd.control.schema import parse_blocks
from aitherfwd.daemon import api as routes
from aitherfwd.daemon.services import Services
from aitherfwd.daemon.state import ReloadOutcome, describe
from aitherfwd.dynamic.blocks import BlockError
from aitherfwd.egress.sandbox import GrantError
from aitherfwd.errors import (
    AitherError,
    ApplyError,
    KernelUnavailableError,
    PolicyError,
    RequestError,
)
from aitherfwd.policy.diagnostics import Diagnostic, Pos, Severity, render_fields
from aitherfwd.roles import Authorizer

DIAG = Diagnostic(
    Severity.ERROR,
    "E-PORT-RANGE",
    "rules[2].dest_ports",
    "70000 is out of range 1-65535",
    Pos("policy.yaml", 14, 11),
)
LINE = "policy.yaml:14:11: error[E-PORT-RANGE] rules[2].dest_ports: 70000 is out of range 1-65535"


# --- one constructor, one renderer -------------------------------------------------------


def test_every_error_is_an_aither_error_built_message_first() -> None:
    for err in (
        RequestError("bad", code="E-TTL"),
        BlockError("protected", code="E-BLOCK-OVERLAP"),
        GrantError("no", code="E-TTL-TOO-LONG", ttl=7200),
        ApplyError("File exists"),
    ):
        assert isinstance(err, AitherError) and err.message and err.code.startswith("E-")
        assert not hasattr(err, "status")
    assert GrantError("x", ttl=5).context == {"ttl": 5}
    assert BlockError("x").code == "E-PROTECTED" and ApplyError("x").code == "E-APPLY"


def test_a_diagnostic_renders_the_same_from_the_object_and_from_its_dict() -> None:
    assert DIAG.render() == LINE
    assert DIAG.as_dict()["rendered"] == LINE
    assert render_fields(DIAG.as_dict()) == LINE
    assert describe(DIAG.as_dict()) == LINE  # the log and systemd STATUS=


def test_an_unlocated_error_renders_with_its_code_only() -> None:
    assert render_fields({"code": "E-LOCKOUT", "message": "refused"}) == "error[E-LOCKOUT] refused"
    assert describe({"code": "E-APPLY", "message": "File exists"}) == "error[E-APPLY] File exists"


def test_the_reload_answer_carries_the_rendered_line_with_the_fields() -> None:
    outcome = ReloadOutcome("rejected", 3, [DIAG.as_dict(), {"code": "E-LOCKOUT", "message": "x"}])
    errors = outcome.as_dict()["errors"]
    assert errors[0]["line"] == 14 and errors[0]["rendered"] == LINE
    assert errors[1]["rendered"] == "error[E-LOCKOUT] x"


class _Client:
    answer: tuple[int, Any] = (200, {})

    def __init__(self, socket_path: Path) -> None:
        pass

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        return self.answer


def test_cli_reload_prints_rejected_errors_located(monkeypatch: pytest.MonkeyPatch) -> None:
    _Client.answer = (
        200,
        {"result": "rejected", "generation": 1, "errors": [DIAG.as_dict()], "warnings": []},
    )
    monkeypatch.setattr(cli_client, "ControlClient", _Client)
    result = CliRunner().invoke(main, ["reload"])
    assert result.exit_code == 3
    assert result.output.splitlines() == [
        "rejected (generation 1)",
        f"  {LINE}",
        "  1 error, 0 warnings",
    ]


def test_cli_prints_an_error_answer_with_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    _Client.answer = (409, {"error": {"code": "E-KERNEL-REFUSED", "message": "File exists"}})
    monkeypatch.setattr(cli_client, "ControlClient", _Client)
    result = CliRunner().invoke(main, ["block", "10.0.0.0/8"])
    assert result.exit_code == 1
    assert result.output == "aitherfwd: error[E-KERNEL-REFUSED] File exists\n"


# --- the API maps codes to statuses ---------------------------------------------------------


class _Audit:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def write(self, now: float, record: AuditRecord) -> None:
        self.lines.append((record.event, as_json(record, now)))


def _api(monkeypatch: pytest.MonkeyPatch, raises: Exception | None) -> tuple[routes.Api, _Audit]:
    async def handler(d: Services, req: HttpRequest) -> Any:
        if raises is not None:
            raise raises
        return {"ok": True}

    monkeypatch.setattr(routes, "ROUTES", (routes.Route("POST", "/v1/test", "admin", handler),))
    audit = _Audit()
    ports = SimpleNamespace(
        audit=audit, clock=SimpleNamespace(now=lambda: 0.0, monotonic=lambda: 0.0)
    )
    return routes.Api(cast(Services, SimpleNamespace(ports=ports)), Authorizer({})), audit


def _call(api: routes.Api, method: str = "POST", path: str = "/v1/test", uid: int = 0) -> Any:
    req = HttpRequest(method, path, {}, {}, b"", Peer(1, uid, uid, ()))
    response = asyncio.run(api(req))
    return response.status, response.body


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RequestError("bad json", code="E-JSON"), 400, "E-JSON"),
        (RequestError("x is not blocked", code="E-NOT-BLOCKED"), 404, "E-NOT-BLOCKED"),
        (BlockError("loopback", code="E-PROTECTED"), 409, "E-PROTECTED"),
        (BlockError("overlaps", code="E-BLOCK-OVERLAP"), 409, "E-BLOCK-OVERLAP"),
        (GrantError("known_bad", code="E-GRANT-REFUSED"), 403, "E-GRANT-REFUSED"),
        (GrantError("overlaps", code="E-GRANT-OVERLAP"), 409, "E-GRANT-OVERLAP"),
        (RequestError("too many", code="E-TOO-MANY"), 413, "E-TOO-MANY"),
        (KernelUnavailableError("no netlink"), 503, "E-KERNEL-UNAVAILABLE"),
        (PolicyError("never an answer"), 500, "E-POLICY"),
    ],
)
def test_the_api_answers_each_code_with_its_registered_status(
    monkeypatch: pytest.MonkeyPatch, error: AitherError, status: int, code: str
) -> None:
    api, audit = _api(monkeypatch, error)
    assert _call(api) == (status, {"error": {"code": code, "message": error.message}})
    if status < 500:
        assert audit.lines == [("request_rejected", audit.lines[0][1])]
        assert audit.lines[0][1]["status"] == status


def test_a_kernel_refusal_of_the_request_is_409_with_the_kernels_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, _ = _api(monkeypatch, ApplyError("Could not process rule: File exists"))
    status, body = _call(api)
    assert status == 409 and body["error"]["code"] == "E-KERNEL-REFUSED"
    assert "File exists" in body["error"]["message"]


def test_routing_and_authorisation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    api, audit = _api(monkeypatch, None)
    assert _call(api)[0] == 200
    assert _call(api, path="/v1/nothing")[1]["error"]["code"] == "E-NOT-FOUND"
    assert _call(api, method="GET") == (
        405,
        {"error": {"code": "E-METHOD", "message": "GET is not allowed on /v1/test"}},
    )
    status, body = _call(api, uid=1000)
    assert (status, body["error"]["code"]) == (403, "E-FORBIDDEN")
    assert [event for event, _ in audit.lines].count("access_denied") == 1


def test_schema_errors_are_request_errors_with_codes() -> None:
    with pytest.raises(RequestError) as info:
        parse_blocks({"blocks": [{"address": "10.0.0.1", "ttl": "soon"}]})
    assert info.value.code == "E-TTL" and "blocks[0].ttl" in info.value.message
