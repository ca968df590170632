"""MCP `tools/call` requests as tool calls (layer L1, pure).

Owns: reading a JSON-RPC 2.0 `tools/call` request (`{"jsonrpc": "2.0", "id": 7,
"method": "tools/call", "params": {"name": "web.fetch", "arguments": {...}}}`) into the
tool name and parameters the evaluator takes, and the JSON-RPC error a proxy can send
back to the client as it is when the call is denied.
"""

from __future__ import annotations

from dataclasses import dataclass

DENIED = -32001  # an implementation-defined server error code (JSON-RPC reserves -32000..-32099)


class McpError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class McpCall:
    id: object
    tool: str
    arguments: dict[str, object]


def parse_tools_call(body: object) -> McpCall:
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise McpError("not a JSON-RPC 2.0 request")
    if body.get("method") != "tools/call":
        raise McpError(f"method must be tools/call, got {str(body.get('method'))[:64]!r}")
    rid = body.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        raise McpError("id must be a string or a number")
    params = body.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        raise McpError("params.name must be the tool's name")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise McpError("params.arguments must be an object")
    return McpCall(rid, params["name"], arguments)


def denied_response(call_id: object, reason: str) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "error": {"code": DENIED, "message": f"tool call denied: {reason}"},
    }
