"""The daemon loads only what its configuration uses: `aitherfwd run` on the default policy
imports neither the other subcommands' modules nor the libraries of the geo, fleet and
gateway paths (those paths import them when they are configured), which would otherwise
sit in its resident memory (docs/benchmarks-daemon.md, the idle RSS note)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from aitherfwd.cli import main
from aitherfwd.cli_lazy import LAZY_COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DEFERRED = (
    "maxminddb",  # adapters/geodb.py, when a policy names countries
    "multiprocessing",  # through maxminddb
    "pickle",  # through multiprocessing
    "nats",  # adapters/natsbus.py, when a [fleet] is configured
    "aitherfwd.adapters.natsbus",  # the fleet's service and bus (daemon/services.py, main.py)
    "aitherfwd.adapters.outbox",
    "aitherfwd.daemon.fleet",
    "aitherfwd.fleet.batch",
    "difflib",  # the did-you-mean hint of a misspelt name
    "zoneinfo",  # policy/timezones.py, when a time window names a time zone
    "aitherfwd.cli_client",  # the other subcommands (cli_lazy.py)
    "aitherfwd.cli_fleet",
    "aitherfwd.cli_audit",
    "aitherfwd.gateway",
)
# what `aitherfwd run` imports before it needs root: the CLI, the `run` command (here it
# stops at a bad config, exit 64), then the policy loaded and compiled as the daemon does
SCRIPT = """
import json, sys, time
from pathlib import Path
from aitherfwd.cli import main
try:
    main(["run", "--config", sys.argv[1]], prog_name="aitherfwd")
except SystemExit as exit:
    assert exit.code == 64, exit.code
from aitherfwd.adapters.files import load_policy
from aitherfwd.compiler import compile_policy
result = load_policy(Path(sys.argv[2]))
assert result.policy is not None, result.diagnostics
compile_policy(result.policy, time.time())
print(json.dumps(sorted(sys.modules)))
"""


def test_run_on_the_default_policy_imports_none_of_the_deferred_modules(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\ndrift_check_interval = 0\n")
    policy = ROOT / "policies" / "default.yaml"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bad), str(policy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "aitherfwd.daemon.main" in loaded and "aitherfwd.compiler" in loaded
    back = sorted(m for m in loaded for d in DEFERRED if m == d or m.startswith(d + "."))
    assert back == [], f"imported again on the daemon's default path: {back}"


def test_help_lists_every_subcommand_with_its_help_the_lazy_ones_included() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {
        line.split()[0]: line for line in result.output.split("Commands:")[1].splitlines() if line
    }
    assert set(LAZY_COMMANDS) <= set(listed)
    assert {"run", "check", "apply"} <= set(listed)
    for name in LAZY_COMMANDS:
        assert len(listed[name].split()) > 1, f"{name} is listed without its help"


def test_each_lazy_subcommand_resolves_to_the_command_of_that_name() -> None:
    ctx = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    result = CliRunner().invoke(main, ["audit", "--help"])
    assert result.exit_code == 0 and "tail" in result.output


def test_every_top_level_command_of_the_lazy_modules_is_listed() -> None:
    """A command added to one of these modules and not to LAZY_COMMANDS would silently be
    missing from `aitherfwd`: every module-level command that no group of its module holds
    must be listed, under its own name."""
    modules = {spec.partition(":")[0] for spec in LAZY_COMMANDS.values()}
    listed = {(spec.partition(":")[0], spec.partition(":")[2]) for spec in LAZY_COMMANDS.values()}
    for name in sorted(modules):
        module = importlib.import_module(name)
        commands = {a: v for a, v in vars(module).items() if isinstance(v, click.Command)}
        held = {
            id(sub)
            for v in commands.values()
            if isinstance(v, click.Group)
            for sub in v.commands.values()
        }
        for attribute, command in commands.items():
            if id(command) in held or command.name is None:
                continue
            assert (name, attribute) in listed, f"{name}:{attribute} is not in LAZY_COMMANDS"
            assert LAZY_COMMANDS[command.name] == f"{name}:{attribute}"
