"""`aitherfwd audit tail`: the audit trail, human-readable and followed (layer L3).

Owns: reading the JSONL file (default: the config's `audit_log`), printing the lines that
pass the filters (`--since 10m` or an RFC 3339 instant, `--event` repeatable, `--source`
an address or prefix), then — unless `--no-follow` — following the file as the daemon
appends to it and across its rotation (a new file at the same path is reopened from its
start). `--json` prints the lines as they are. Reads only; needs read access to the file.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import IO

import click

from aitherfwd import audit_view
from aitherfwd.config import DaemonConfig
from aitherfwd.durations import parse_duration
from aitherfwd.policy.fields import parse_cidr
from aitherfwd.policy.model import IPNetwork

POLL = 0.5  # seconds between looks at a followed file
TAIL = 20  # lines shown without --since


@click.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command()
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path),
    default=DaemonConfig().audit_log,
    show_default=True,
    help="The audit log.",
)
@click.option("--since", help="Only lines since: a duration (10m, 2h) or an RFC 3339 instant.")
@click.option("--event", "events", multiple=True, help="Only these events (repeatable).")
@click.option("--source", help="Only lines whose source_ip is this address or in this prefix.")
@click.option("--follow/--no-follow", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON lines as they are.")
def tail(
    path: Path,
    since: str | None,
    events: tuple[str, ...],
    source: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Print the audit trail (the last 20 lines, or all since --since) and follow it."""
    flt = audit_view.Filter(
        since=_since(since) if since else None,
        events=frozenset(events),
        source=_source(source) if source else None,
    )
    try:
        handle = path.open("r", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        shown = [t for t in handle.read().splitlines() if _wanted(t, flt)]
        for text in shown if since else shown[-TAIL:]:
            _print(text, as_json)
        if follow:
            _follow(path, handle, flt, as_json)


def _follow(path: Path, handle: IO[str], flt: audit_view.Filter, as_json: bool) -> None:
    inode = path.stat().st_ino
    pending = ""
    while True:
        chunk = handle.read()
        if chunk:
            pending += chunk
            *complete, pending = pending.split("\n")
            for text in complete:
                if _wanted(text, flt):
                    _print(text, as_json)
            continue
        time.sleep(POLL)
        try:
            now_inode = path.stat().st_ino
        except FileNotFoundError:
            continue  # between the rename and the new file
        if now_inode != inode:  # rotated: the old file is complete, read the new one
            handle.close()
            handle = path.open("r", encoding="utf-8", errors="replace")
            inode, pending = now_inode, ""


def _wanted(text: str, flt: audit_view.Filter) -> bool:
    line = audit_view.parse(text)
    return line is not None and flt.matches(line)


def _print(text: str, as_json: bool) -> None:
    line = audit_view.parse(text)
    if line is not None:
        click.echo(text if as_json else audit_view.render(line))


def _since(text: str) -> float:
    try:
        return datetime.fromisoformat(text.removesuffix("Z") + "+00:00").timestamp()
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint="--since") from None


def _source(text: str) -> IPNetwork:
    try:
        return parse_cidr(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--source") from None
