"""CLI commands that talk to the running daemon over its control socket (layer L3).

Owns: `status`, `block`, `unblock`, `blocks`, `evaluate`, `reload`, `threat`, `explain` —
argument parsing, one request each, human-readable or `--json` output, exit codes. A
daemon that is not running is a one-line error, never a traceback.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any, NoReturn

import click

from aitherfwd import codes
from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.errors import AitherError, ExitCode
from aitherfwd.policy.diagnostics import Diagnostic, render_fields, report_lines

DEFAULT_SOCKET = Path("/run/aitherfwd/control.sock")

socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    envvar="AITHERFWD_SOCKET",
    help="The daemon's control socket.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")


def _call(socket_path: Path, method: str, path: str, body: Any = None) -> Any:
    try:
        status, answer = ControlClient(socket_path).request(method, path, body)
    except AitherError as err:
        _die(render_fields({"code": err.code, "message": err.message}), err.exit_code)
    if status >= 400:
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            error = {"code": "E-HTTP", "message": f"HTTP {status}"}
        code = str(error.get("code") or "E-HTTP")
        _die(render_fields({**error, "code": code}), codes.exit_code(code))
    return answer


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"aitherfwd: {message}", err=True)
    sys.exit(int(code))


def _out(answer: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(answer, indent=2) if as_json else text)


@click.command()
@socket_option
@json_option
def status(socket_path: Path, as_json: bool) -> None:
    """Show the daemon's generation, policy, last reload and set sizes."""
    st = _call(socket_path, "GET", "/v1/status")
    last = st.get("last_reload") or {}
    lines = [
        f"generation {st['generation']}  policy {st['policy_path']} "
        f"(sha256 {st['policy_sha256'][:12]})  rules {st['rules']}",
        f"last reload: {last.get('result', '-')} ({last.get('trigger', '-')}) "
        f"at {last.get('at', '-')}",
    ]
    lines += [f"  {render_fields(e)}" for e in last.get("errors", [])]
    lines.append("elements: " + ", ".join(f"{k}={v}" for k, v in st["elements"].items()))
    if "sandbox" in st:
        sb, dns = st["sandbox"], st["egress_dns"]
        lines.append(
            f"sandbox grants: v4 {sb['grants_v4']}, v6 {sb['grants_v6']} "
            f"({sb['granted_total']} granted, {sb['refused_total']} refused since start)  "
            f"egress names: {dns['names']} ({dns['failing']} failing), "
            f"{dns['addresses']} addresses"
        )
    if st.get("fleet"):
        f = st["fleet"]
        lines.append(
            f"fleet {f['fleet']} as {f['host']}: "
            f"{'connected to ' + f['server'] if f['connected'] else 'DISCONNECTED'}  "
            f"backlog {f['backlog']}  published {f['published']}  applied {f['applied']}  "
            f"lag {f['lag']}  last {f['last_message'] or '-'}"
        )
    lines.append(f"uptime {st['uptime_seconds']}s  drift repairs {st['drift_repairs']}")
    _out(st, as_json, "\n".join(lines))


@click.command()
@click.argument("address")
@click.option("--ttl", help="How long, e.g. 15m, 1h, 7d; omitted: permanent.")
@click.option("--reason", default="manual", show_default=True)
@click.option("--fleet", is_flag=True, help="Share the block with every host of the fleet.")
@socket_option
@json_option
def block(
    address: str, ttl: str | None, reason: str, fleet: bool, socket_path: Path, as_json: bool
) -> None:
    """Block ADDRESS (an IPv4/IPv6 address or prefix)."""
    answer = _call(
        socket_path,
        "POST",
        "/v1/fleet/blocks" if fleet else "/v1/blocks",
        {"address": address, "ttl": ttl, "reason": reason},
    )
    b = answer["blocked"][0]
    _out(
        answer,
        as_json,
        f"blocked {b['address']} until {b['expires_at'] or 'forever'} ({b['reason']})",
    )


@click.command()
@click.argument("address")
@click.option("--fleet", is_flag=True, help="Lift it on every host of the fleet too.")
@socket_option
@json_option
def unblock(address: str, fleet: bool, socket_path: Path, as_json: bool) -> None:
    """Lift the block on ADDRESS (here only, unless --fleet)."""
    path = ("/v1/fleet/blocks/" if fleet else "/v1/blocks/") + urllib.parse.quote(address, safe="")
    answer = _call(socket_path, "DELETE", path)
    if fleet:
        _out(answer, as_json, f"unblock of {answer['address']} sent to the fleet")
        return
    _out(answer, as_json, f"unblocked {answer['unblocked']['address']}")


@click.command()
@socket_option
@json_option
def blocks(socket_path: Path, as_json: bool) -> None:
    """List active blocks."""
    answer = _call(socket_path, "GET", "/v1/blocks")
    rows = [
        f"{b['address']:<40} {b['expires_at'] or 'permanent':<26} {b['source']:<10} {b['reason']}"
        for b in answer["blocks"]
    ]
    _out(answer, as_json, "\n".join(rows) if rows else "no active blocks")


@click.command()
@click.option("--source", "source_ip", help="Source address (inbound).")
@click.option("--port", type=click.IntRange(1, 65535), help="Destination port.")
@click.option(
    "--proto", type=click.Choice(["tcp", "udp", "icmp"]), default="tcp", show_default=True
)
@click.option(
    "--direction",
    type=click.Choice(["inbound", "outbound", "forward"]),
    default="inbound",
    show_default=True,
    help="forward: routed through the host (--dest is the container, --port the published one).",
)
@click.option("--dest", help="Destination address.")
@click.option("--dest-host", help="Destination host name (outbound; the daemon resolves it).")
@click.option("--audit", is_flag=True, help="Record the answer in the audit trail.")
@socket_option
@json_option
def evaluate(
    source_ip: str | None,
    port: int | None,
    proto: str,
    direction: str,
    dest: str | None,
    dest_host: str | None,
    audit: bool,
    socket_path: Path,
    as_json: bool,
) -> None:
    """Would this connection pass, and which rule decides?"""
    body: dict[str, Any] = {"protocol": proto, "direction": direction}
    if audit:
        body["audit"] = True
    if source_ip is not None:
        body["source_ip"] = source_ip
    elif direction != "outbound":
        _die(f"--source is required for {direction}", ExitCode.USAGE)
    if port is not None:
        body["dest_port"] = port
    if dest is not None:
        body["dest_ip"] = dest
    if dest_host is not None:
        body["dest_host"] = dest_host
    v = _call(socket_path, "POST", "/v1/evaluate", body)
    _out(
        v,
        as_json,
        f"{v['verdict']}  rule={v['rule'] or '-'}  zone={v.get('zone') or '-'}  {v['reason']}",
    )


@click.command()
@click.option("--force", is_flag=True, help="Apply even if it would cut live admin sessions.")
@socket_option
@json_option
def reload(force: bool, socket_path: Path, as_json: bool) -> None:
    """Reload the policy now; exit 3 when the daemon rejected it."""
    answer = _call(socket_path, "POST", "/v1/reload", {"force": force})
    lines = [f"{answer['result']} (generation {answer['generation']})"]
    found = [*answer.get("errors", []), *answer.get("warnings", [])]
    lines += [f"  {line}" for line in report_lines([Diagnostic.from_dict(d) for d in found])]
    _out(answer, as_json, "\n".join(lines))
    if answer["result"] == "rejected":
        sys.exit(int(ExitCode.INVALID_POLICY))


@click.command()
@click.option("--type", "kind", required=True, help="Event type, e.g. SENTRY_PORT_SCAN.")
@click.option("--source", "source_ip", required=True, help="The offending address.")
@click.option(
    "--severity",
    type=click.Choice(["low", "medium", "high", "critical"]),
    default="medium",
    show_default=True,
)
@click.option("--detail", default="", help="Free text.")
@socket_option
@json_option
def threat(
    kind: str, source_ip: str, severity: str, detail: str, socket_path: Path, as_json: bool
) -> None:
    """Report a threat event to the reputation ladder."""
    answer = _call(
        socket_path,
        "POST",
        "/v1/threats",
        {"type": kind, "source_ip": source_ip, "severity": severity, "detail": detail},
    )
    lines = [f"accepted {answer['accepted']} event(s)"]
    lines += [
        f"blocked {b['address']} until {b['expires_at'] or 'forever'} ({b['reason']})"
        for b in answer["blocked"]
    ]
    lines += [f"not blocked (protected): {a}" for a in answer["protected"]]
    _out(answer, as_json, "\n".join(lines))


@click.command()
@click.argument("address")
@click.option("--port", "ports", multiple=True, type=int, help="Give a verdict for this port.")
@click.option("--proto", default="tcp", type=click.Choice(["tcp", "udp"]), show_default=True)
@socket_option
@json_option
def explain(
    address: str, ports: tuple[int, ...], proto: str, socket_path: Path, as_json: bool
) -> None:
    """Why an address is treated as it is: verdicts, block, reputation, history."""
    query = urllib.parse.urlencode(
        {"protocol": proto, **({"port": ",".join(map(str, ports))} if ports else {})}
    )
    path = "/v1/explain/" + urllib.parse.quote(address, safe="") + "?" + query
    answer = _call(socket_path, "GET", path)
    _out(answer, as_json, _explain_text(answer))


def _explain_text(a: dict[str, Any]) -> str:
    rep = a["reputation"]
    lines = [f"{a['address']}  zone {a['zone'] or '(none)'}"]
    lines += [
        f"  {v['protocol']}/{v['port']}: {v['verdict']} ({v['rule'] or 'no rule'}) {v['reason']}"
        for v in a["verdicts"]
    ]
    lines += [
        f"  published {v['protocol']}/{v['port']} (containers): {v['verdict']} "
        f"({v['rule'] or 'no rule'}) {v['reason']}"
        for v in a.get("forward_verdicts", [])
    ]
    blk = a["block"]
    if blk:
        until = blk["expires_at"] or "forever"
        lines.append(f"  BLOCKED as {blk['address']} until {until}: {blk['reason']}")
    lines.append(
        f"  reputation {rep['key']}: score {rep['score']}/{rep['threshold']}, "
        f"{rep['events']} event(s), {rep['blocks_in_memory']} block(s) remembered"
        + (", permanent" if rep["permanent"] else "")
    )
    lines += [
        f"    event {e['at']} {e['type']} {e['severity']} {e['detail']}"[:200]
        for e in rep["recent_events"]
    ]
    for h in a["history"]:
        end = f"ended {h['ended_at']} ({h['end_reason']})" if h["ended_at"] else "active"
        lines.append(f"  block {h['started_at']} {h['address']} {end}: {h['reason']}")
        lines += [f"    after {e['type']} {e['severity']} at {e['at']}" for e in h["events"]]
    return "\n".join(lines)


@click.group()
def sandbox() -> None:
    """Time-bound outbound grants (the sandbox role): add, list, revoke."""


@sandbox.command("add")
@click.argument("destination")
@click.option("--ttl", help="How long, e.g. 30m, 1h (default: the policy's default_ttl).")
@click.option("--scope", default="sandbox", show_default=True, help="Who it is for.")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True, help="Only port.")
@socket_option
@json_option
def sandbox_add(
    destination: str,
    ttl: str | None,
    scope: str,
    ports: tuple[int, ...],
    socket_path: Path,
    as_json: bool,
) -> None:
    """Let the host reach DESTINATION (address, CIDR or host name) for a while."""
    body: dict[str, Any] = {"destination": destination, "scope": scope}
    if ttl is not None:
        body["ttl"] = ttl
    if ports:
        body["ports"] = list(ports)
    a = _call(socket_path, "POST", "/v1/sandbox", body)
    lines = [f"granted {g['destination']} until {g['expires_at']}" for g in a["granted"]]
    if a.get("capped"):
        lines.append(f"(ttl capped at the policy's max_ttl: {a['ttl']} s)")
    _out(a, as_json, "\n".join(lines))


@sandbox.command("list")
@socket_option
@json_option
def sandbox_list(socket_path: Path, as_json: bool) -> None:
    """Live grants with their scope and remaining time."""
    a = _call(socket_path, "GET", "/v1/sandbox")
    lines = [
        f"{g['destination']:<40} {g['scope']:<24} {g['remaining_seconds']:>7}s "
        f"ports={','.join(map(str, g['ports'])) or '-'}"
        + (f" host={g['host']}" if g["host"] else "")
        for g in a["grants"]
    ]
    _out(a, as_json, "\n".join(lines) or "no sandbox grants")


@sandbox.command("revoke")
@click.argument("destination")
@socket_option
@json_option
def sandbox_revoke(destination: str, socket_path: Path, as_json: bool) -> None:
    """End the grant(s) for DESTINATION (address, CIDR or the host name granted)."""
    quoted = urllib.parse.quote(destination, safe="")
    a = _call(socket_path, "DELETE", f"/v1/sandbox/{quoted}")
    _out(a, as_json, "\n".join(f"revoked {g['destination']}" for g in a["revoked"]))
