"""`aitherfwd fleet …`: the fleet's commands, talking to the daemon's socket (layer L3).

Owns: `fleet status` (the bus, backlog, counters, the followed policy revision) and
`fleet push-policy FILE` (the daemon validates the file and publishes it to the fleet's
KV bucket; exit 3 with every problem when it is invalid). Blocks and unblocks for the
whole fleet are `aitherfwd block --fleet` and `aitherfwd unblock --fleet`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aitherfwd.adapters.files import read_text
from aitherfwd.cli_client import _call, _die, _out, json_option, socket_option
from aitherfwd.errors import ExitCode
from aitherfwd.policy.diagnostics import Diagnostic, report_lines


@click.group()
def fleet() -> None:
    """Hosts that share blocks, threat events and policy over NATS (docs/fleet.md)."""


@fleet.command("status")
@socket_option
@json_option
def fleet_status(socket_path: Path, as_json: bool) -> None:
    """The bus, the backlog, what was published, applied and skipped."""
    f = _call(socket_path, "GET", "/v1/fleet")
    lines = [
        f"fleet {f['fleet']} as {f['host']} (shares {', '.join(f['share'])}): "
        + (f"connected to {f['server']}" if f["connected"] else "DISCONNECTED"),
        f"backlog {f['backlog']} (dropped {f['backlog_dropped']})  published {f['published']}  "
        f"applied {f['applied']}  invalid {f['invalid']}  lag {f['lag']}",
        "skipped: " + (", ".join(f"{k}={v}" for k, v in f["skipped"].items()) or "none"),
        f"last message: {f['last_message'] or '-'}",
    ]
    if f["last_error"]:
        lines.append(f"last error: {f['last_error']}")
    if f.get("policy"):
        p = f["policy"]
        lines.append(
            f"fleet policy: revision {p['revision']} (last seen {p['last_seen']}, "
            f"{p['last_result']})"
        )
    _out(f, as_json, "\n".join(lines))


@fleet.command("push-policy")
@click.argument("policy_file", type=click.Path(path_type=Path, dir_okay=False))
@socket_option
@json_option
def push_policy(policy_file: Path, socket_path: Path, as_json: bool) -> None:
    """Validate POLICY_FILE and publish it to every host that follows the fleet's policy."""
    try:
        text = read_text(policy_file)
    except (OSError, UnicodeDecodeError) as exc:
        _die(f"cannot read {policy_file}: {exc}", int(ExitCode.USAGE))
    answer = _call(socket_path, "POST", "/v1/fleet/policy", {"policy": text})
    if answer["result"] != "published":
        found = [Diagnostic.from_dict(d) for d in answer.get("errors", [])]
        lines = ["rejected: nothing was published", *report_lines(found)]
        _out(answer, as_json, "\n".join(lines))
        sys.exit(int(ExitCode.INVALID_POLICY))
    _out(answer, as_json, f"published revision {answer['revision']}")
