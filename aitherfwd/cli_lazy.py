"""Subcommands imported when they are used (layer L3).

Owns: which module defines which subcommand of `aitherfwd` outside cli.py
(`LAZY_COMMANDS`), and `LazyGroup`, the click group that imports such a module only when
one of its subcommands is looked up: when it runs, or when `--help` lists every subcommand
with its help. So `aitherfwd run` (the daemon) loads neither the client, audit, fleet and
gateway commands nor what they import, and does not carry them in its resident memory
(tests/unit/test_idle_imports.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

_CLIENT = ("status", "block", "unblock", "blocks", "evaluate", "reload", "threat", "explain")
LAZY_COMMANDS = {  # subcommand -> "module:attribute"; a new command of these modules goes here
    **{name: f"aitherfwd.cli_client:{name}" for name in (*_CLIENT, "sandbox")},
    "fleet": "aitherfwd.cli_fleet:fleet",
    "audit": "aitherfwd.cli_audit:audit",
    "gateway": "aitherfwd.gateway.cli:gateway",
}


class LazyGroup(click.Group):
    """`lazy`: subcommand name -> "package.module:attribute" (a click command or group)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, name: str) -> click.Command:
        module, _, attribute = self.lazy[name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[name]} is not a click command")
        return command
