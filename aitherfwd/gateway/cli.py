"""`aitherfwd gateway` and the tool-policy branch of `aitherfwd check` (layer L3, click).

Owns: the command line of the gateway — every option also read from seed 003's
environment variable (`BIND_ADDR`, `POLICY_PATH`, `AUDIT_LOG_PATH`, `SERVICE_TOKEN_PATH`)
or ours (`AGENT_TOKENS_DIR`, `AITHERFWD_SOCKET`); an option given wins over the variable.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from aitherfwd.errors import AitherError, ExitCode
from aitherfwd.gateway import config as serve
from aitherfwd.gateway.parse import parse_tool_policy
from aitherfwd.policy.diagnostics import report_lines, summary


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@click.command("gateway")
@click.option(
    "--bind",
    envvar="BIND_ADDR",
    default=serve.DEFAULT_BIND,
    show_default=True,
    help="Listen address host:port (env BIND_ADDR); ignored under socket activation.",
)
@click.option(
    "--policy",
    envvar="POLICY_PATH",
    default=str(serve.DEFAULT_POLICY),
    show_default=True,
    help="Tool policy YAML (env POLICY_PATH).",
)
@click.option(
    "--audit-log",
    envvar="AUDIT_LOG_PATH",
    default=str(serve.DEFAULT_AUDIT),
    show_default=True,
    help='JSONL audit log (env AUDIT_LOG_PATH); "" = none.',
)
@click.option(
    "--service-token",
    envvar="SERVICE_TOKEN_PATH",
    default=str(serve.DEFAULT_TOKEN),
    show_default=True,
    help="Bearer token file for /v1/reload (env SERVICE_TOKEN_PATH).",
)
@click.option(
    "--agent-tokens-dir",
    envvar="AGENT_TOKENS_DIR",
    default=None,
    help="One token file per agent, named after it (env AGENT_TOKENS_DIR).",
)
@click.option(
    "--aitherfwd-socket",
    envvar="AITHERFWD_SOCKET",
    default=str(serve.DEFAULT_SOCKET),
    show_default=True,
    help="The daemon's control socket, for network grants.",
)
def gateway(
    bind: str,
    policy: str,
    audit_log: str,
    service_token: str,
    agent_tokens_dir: str | None,
    aitherfwd_socket: str,
) -> None:
    """Run the tool-call gateway (seed 003's API on BIND_ADDR). See docs/gateway.md."""  # fmt: skip
    logging.getLogger().setLevel(logging.INFO)
    cfg = serve.GatewayConfig(
        bind=bind,
        policy=Path(policy),
        audit_log=_path(audit_log),
        service_token=_path(service_token),
        agent_tokens_dir=_path(agent_tokens_dir),
        aitherfwd_socket=Path(aitherfwd_socket),
    )
    from aitherfwd.gateway.serve import run  # noqa: PLC0415  (uvicorn only when serving)

    try:
        serve.parse_bind(cfg.bind)
        sys.exit(run(cfg))
    except AitherError as err:
        click.echo(f"aitherfwd gateway: error[{err.code}] {err.message}", err=True)
        sys.exit(int(err.exit_code))


def check_tool_policy(text: str, filename: str, as_json: bool) -> None:
    """`aitherfwd check` on a tool policy: every problem located; exit 0 or 3."""
    result = parse_tool_policy(text, filename)
    if as_json:
        diags = [d.as_dict() for d in result.diagnostics]
        click.echo(json.dumps({"valid": result.ok, "diagnostics": diags}, indent=2))
    else:
        for line in report_lines(result.diagnostics):
            click.echo(line)
        if result.ok:
            click.echo(f"{filename}: valid tool policy ({summary(result.diagnostics)})")
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.INVALID_POLICY))
