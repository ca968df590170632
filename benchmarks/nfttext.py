"""The baseline's input: the ruleset as nft text, edited just enough for `nft -f`.

Owns: getting the text from `aitherfwd compile --format nft` (rendered by the kernel in a
private namespace; run as a CLI subprocess, never timed), the minimal edits nftables 1.0.6's
text parser needs to read it back, and the derived files the baselines load (atomic
replace, a differently named fresh table).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aitherfwd.nft import names as n
from benchmarks.netns import BenchError

COMMENT_MAX = 128  # nft's text parser refuses longer comments (the JSON parser does not)
_META_CHAIN = re.compile(rf"^(\tchain) {re.escape(n.META_CHAIN)} \{{$", re.MULTILINE)
_COMMENT = re.compile(r'comment "([^"]*)"')


@dataclass(frozen=True, slots=True)
class NftText:
    """Loadable text plus what had to be changed to make it loadable."""

    text: str
    edits: tuple[str, ...]


def render(policy: Path) -> str:
    """`aitherfwd compile --format nft POLICY`, exactly as a user would run it."""
    exe = Path(sys.executable).with_name("aitherfwd")
    proc = subprocess.run(
        [str(exe), "compile", "--format", "nft", str(policy)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"aitherfwd compile --format nft {policy} failed: {proc.stderr}")
    return proc.stdout


def loadable(text: str) -> NftText:
    """Apply the edits nft 1.0.6 needs: the chain named `meta` is a keyword of the nft
    language (neither `meta` nor `"meta"` parses), and the ruleset-hash comment is longer
    than the 128 characters the text parser accepts."""
    edits: list[str] = []
    renamed, count = _META_CHAIN.subn(rf"\1 {n.META_CHAIN}_ {{", text)
    if count:
        edits.append(f"chain `{n.META_CHAIN}` renamed `{n.META_CHAIN}_` (nft keyword)")
    long_comments = 0

    def cut(m: re.Match[str]) -> str:
        nonlocal long_comments
        if len(m.group(1)) <= COMMENT_MAX:
            return m.group(0)
        long_comments += 1
        return f'comment "{m.group(1)[:COMMENT_MAX]}"'

    renamed = _COMMENT.sub(cut, renamed)
    if long_comments:
        edits.append(f"{long_comments} comment(s) cut to {COMMENT_MAX} characters")
    return NftText(renamed, tuple(edits))


def atomic_replace(text: str) -> str:
    """One `nft -f` transaction that deletes our table and loads it again (the classic
    reload idiom; it drops every set element)."""
    head = f"table {n.FAMILY} {n.TABLE}\ndelete table {n.FAMILY} {n.TABLE}\n"
    return head + text


def as_table(text: str, table: str) -> str:
    """The same ruleset under another table name, to load it fresh next to ours."""
    return text.replace(f"table {n.FAMILY} {n.TABLE} {{", f"table {n.FAMILY} {table} {{", 1)
