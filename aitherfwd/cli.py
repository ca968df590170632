"""The `aitherfwd` command line (layer L3): check, check-config, compile, plan, apply, remove.

Owns: argument parsing (click), wiring the file reader, the pure core and the kernel
adapter together, output formats and exit codes. No policy logic lives here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import click

from aitherfwd import __version__
from aitherfwd.adapters.dns import ResolveError, resolve_sync
from aitherfwd.adapters.files import load_policy, read_text
from aitherfwd.adapters.forwarding import forwarding_families
from aitherfwd.adapters.nft import Nft
from aitherfwd.cli_lazy import LAZY_COMMANDS, LazyGroup
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.config import ConfigError
from aitherfwd.errors import AitherError, ExitCode, KernelUnavailableError
from aitherfwd.policy.containers import forwarding_warning
from aitherfwd.policy.diagnostics import (
    Diagnostic,
    Pos,
    Severity,
    render_fields,
    report_lines,
    summary,
)
from aitherfwd.policy.model import Policy
from aitherfwd.reconcile import plan as make_plan

POLICY_ARG = click.argument("policy", type=click.Path(path_type=Path, dir_okay=False))


def _fail(err: AitherError) -> NoReturn:
    """An error's located diagnostics when it has them, else one `error[CODE]` line."""
    if isinstance(err, ConfigError) and err.diagnostics:
        _print_diagnostics(err.diagnostics, to_err=True)
    else:
        click.echo(
            "aitherfwd: " + render_fields({"code": err.code, "message": err.message}), err=True
        )
    sys.exit(int(err.exit_code))


def _print_diagnostics(diags: list[Diagnostic], *, to_err: bool) -> None:
    for line in report_lines(diags):
        click.echo(line, err=to_err)


def _load(path: Path, *, quiet_warnings: bool = False) -> Policy:
    """Load and validate, print diagnostics to stderr, exit 3 when invalid."""
    result = load_policy(path)
    shown = result.diagnostics if not (result.ok and quiet_warnings) else []
    _print_diagnostics(shown, to_err=True)
    if result.policy is None:
        sys.exit(int(ExitCode.INVALID_POLICY))
    return result.policy


@click.group(
    cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="aitherfwd")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done.")
def main(verbose: bool) -> None:
    """aitherfwd keeps the nftables table `inet aitherfwd` in sync with a YAML policy."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command()
@POLICY_ARG
@click.option("--json", "as_json", is_flag=True, help="Diagnostics as JSON.")
@click.option("--no-resolve", is_flag=True, help="Do not look up the egress host names.")
def check(policy: Path, as_json: bool, no_resolve: bool) -> None:
    """Validate POLICY: exit 0 when valid, 3 with every problem listed otherwise. Host
    names of the egress section that do not resolve are warnings."""
    from aitherfwd.gateway import cli as gateway_cli  # noqa: PLC0415
    from aitherfwd.gateway.parse import looks_like_tool_policy  # noqa: PLC0415

    try:
        text = read_text(policy)
    except (OSError, UnicodeDecodeError):
        text = ""  # load_policy reports why, located
    if looks_like_tool_policy(text):  # a tool-call gateway policy (docs/gateway.md)
        gateway_cli.check_tool_policy(text, str(policy), as_json)
    result = load_policy(policy)
    if result.policy is not None and not no_resolve:
        result = replace(
            result, diagnostics=[*result.diagnostics, *_unresolved(result.policy, str(policy))]
        )
    if result.policy is not None:
        fwd = forwarding_warning(result.policy, forwarding_families(), str(policy))
        result = replace(result, diagnostics=[*result.diagnostics, *([fwd] if fwd else [])])
    if as_json:
        click.echo(
            json.dumps(
                {"valid": result.ok, "diagnostics": [d.as_dict() for d in result.diagnostics]},
                indent=2,
            )
        )
    else:
        _print_diagnostics(result.diagnostics, to_err=False)
        if result.ok:
            click.echo(f"{policy}: valid ({summary(result.diagnostics)})")
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.INVALID_POLICY))


def _unresolved(policy: Policy, filename: str) -> list[Diagnostic]:
    eg = policy.egress
    if eg is None or not eg.hosts() or not eg.resolvers:
        return []
    servers = [str(a) for a in eg.resolvers]
    out = []
    for name, answer in sorted(resolve_sync(servers, eg.hosts()).items()):
        if isinstance(answer, ResolveError):
            out.append(
                Diagnostic(
                    Severity.WARNING,
                    "W-UNRESOLVED",
                    "egress",
                    f"'{name}' does not resolve via {', '.join(servers)} ({answer.message}); "
                    "it stays closed until it does",
                    Pos(filename, 1, 1),
                )
            )
    return out


@main.command("compile")
@POLICY_ARG
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "nft"]),
    default="json",
    show_default=True,
    help="libnftables JSON, or nft syntax as the kernel lists it.",
)
def compile_(policy: Path, fmt: str) -> None:
    """Print the exact ruleset `apply` would load (deterministic)."""
    ruleset = compile_policy(_load(policy, quiet_warnings=True), time.time())
    if fmt == "json":
        click.echo(ruleset.render_json(), nl=False)
        return
    from aitherfwd.adapters.render import render_nft_text  # noqa: PLC0415

    try:
        click.echo(render_nft_text(ruleset), nl=False)
    except AitherError as err:
        _fail(err)


def _kernel_ruleset(policy: Path) -> tuple[Ruleset, Nft]:
    ruleset = compile_policy(_load(policy), time.time())
    try:
        return ruleset, Nft()
    except AitherError as err:
        _fail(err)


@main.command()
@POLICY_ARG
def plan(policy: Path) -> None:
    """Show what `apply` would change in the live table; exit 2 when there are changes."""
    ruleset, nft = _kernel_ruleset(policy)
    try:
        observed = nft.observe()
    except AitherError as err:
        _fail(err)
    result = make_plan(ruleset, observed)
    click.echo(result.render(), nl=False)
    sys.exit(int(ExitCode.CHANGES if result.changed else ExitCode.OK))


@main.command()
@POLICY_ARG
def apply(policy: Path) -> None:
    """Validate, compile and apply POLICY in one transaction (all or nothing)."""
    ruleset, nft = _kernel_ruleset(policy)
    try:
        nft.apply(ruleset)
    except AitherError as err:
        _fail(err)
    click.echo(
        f"applied ruleset {ruleset.sha256[:12]} (policy {ruleset.policy_sha256[:12]}) "
        "to table inet aitherfwd"
    )


@main.command()
@click.option("--yes", is_flag=True, help="Really remove the firewall table.")
def remove(yes: bool) -> None:
    """Delete table inet aitherfwd: the explicit way to stop enforcing (bans are lost)."""
    if not yes:
        click.echo("aitherfwd: refusing to remove the firewall without --yes", err=True)
        sys.exit(int(ExitCode.USAGE))
    try:
        removed = Nft().delete_table()
    except AitherError as err:
        _fail(err)
    click.echo("removed table inet aitherfwd" if removed else "table inet aitherfwd was absent")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="As a JSON object.")
def counters(as_json: bool) -> None:
    """Packets and bytes per rule (named kernel counters), to trace verdicts to rules."""
    from aitherfwd.adapters import nftcounters  # noqa: PLC0415

    try:  # over netlink: libnftables' `list counters` would first fetch every set element
        values = nftcounters.read()
    except OSError as err:
        _fail(KernelUnavailableError(f"cannot read the kernel counters: {err}"))
    if as_json:
        click.echo(
            json.dumps(
                {k: {"packets": p, "bytes": b} for k, (p, b) in sorted(values.items())}, indent=2
            )
        )
        return
    width = max((len(k) for k in values), default=10)
    for name, (packets, nbytes) in sorted(values.items()):
        click.echo(f"{name:<{width}}  {packets:>10} packets  {nbytes:>12} bytes")


@main.command()
@click.option("--policy", type=click.Path(path_type=Path), help="Policy file.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("/etc/aitherfwd/aitherfwd.toml"),
    show_default=True,
)
@click.option("--socket", "socket_path", type=click.Path(path_type=Path))
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--audit-log", type=click.Path(path_type=Path))
@click.option(
    "--metrics", "metrics_listen", metavar="HOST:PORT", help='Prometheus endpoint; "" = off.'
)
def run(
    policy: Path | None,
    config_path: Path,
    socket_path: Path | None,
    state_dir: Path | None,
    audit_log: Path | None,
    metrics_listen: str | None,
) -> None:
    """Run the daemon in the foreground (systemd: Type=notify). An invalid config exits 64
    with every problem located, as `check-config` prints them."""
    from aitherfwd.daemon import main as daemon_main  # noqa: PLC0415

    try:
        cfg = daemon_main.with_overrides(
            daemon_main.load_config(config_path),
            policy=policy,
            socket=socket_path,
            state_dir=state_dir,
            audit_log=audit_log,
            metrics_listen=metrics_listen,
        )
    except ConfigError as err:
        _fail(err)
    logging.getLogger().setLevel(logging.INFO)
    try:
        sys.exit(daemon_main.main(cfg))
    except AitherError as err:
        _fail(err)


@main.command("check-config")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False))
def check_config(config: Path) -> None:
    """Validate the daemon config CONFIG (TOML): exit 0 when valid, 64 with every problem
    located (types, ranges, unknown keys, user and group names)."""
    from aitherfwd.daemon import main as daemon_main  # noqa: PLC0415

    try:
        if not config.is_file():
            raise ConfigError.unreadable(str(config), "no such file")
        daemon_main.load_config(config)
    except ConfigError as err:
        _fail(err)
    click.echo(f"{config}: valid")
