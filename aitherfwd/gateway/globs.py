"""Path globs of a tool policy (layer L1, pure).

Owns: compiling `paths_allowlist` / `paths_denylist` patterns to anchored regular
expressions. A pattern matches a path and everything beneath it (seed 003: a plain
`/etc/shadow` or `/vault/**` is a prefix match on whole segments); within a segment `*`
matches any characters but `/` and `?` one of them; a segment `**` matches any number of
segments; a pattern without a `/` (`*.key`, `.env`, `*`) matches that name at any depth.
Unlike the seed, where `*` matched nothing, `/home/*/.ssh` denies every home's `.ssh`.
Must not import adapters or do I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PATTERN = 4096


class GlobError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Glob:
    text: str
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def _segment(seg: str) -> str:
    out = []
    for ch in seg:
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _validate(text: str) -> None:
    if not text or len(text) > MAX_PATTERN:
        raise GlobError(f"a path pattern must be 1-{MAX_PATTERN} characters")
    if "\0" in text:
        raise GlobError("a path pattern must not contain a null byte")
    if not text.startswith("/"):
        raise GlobError(f"'{text}' is not absolute; patterns start with '/' (e.g. /srv/data/**)")
    if any(ch in text for ch in "[]{}"):
        raise GlobError(f"'{text}': brackets and braces are not supported; use * ? or **")
    if any(s in (".", "..") for s in text.split("/")):
        raise GlobError(f"'{text}' contains '.' or '..'; write the canonical path")


def compile_glob(text: str) -> Glob:
    """`text` as a Glob; raises GlobError saying how to write it."""
    if text == "**":
        return Glob(text, re.compile(".*", re.DOTALL))
    if "/" not in text and text not in (".", ".."):
        # a pattern without a slash (`*`, `*.key`, `.env`) matches a name at any depth;
        # the seed's `*` matched nothing at all
        if len(text) > MAX_PATTERN or "\0" in text or "**" in text:
            raise GlobError(f"'{text}': a name pattern is 1-{MAX_PATTERN} characters, no '**'")
        return Glob(text, re.compile(f"(?:.*/)?{_segment(text)}(?:/.*)?", re.DOTALL))
    _validate(text)
    segments = [s for s in text.split("/") if s]
    if not segments:
        return Glob(text, re.compile("/.*", re.DOTALL))  # "/" or "/**": every absolute path
    parts: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "**":
            parts.append("(?:/.*)?")
        elif "**" in seg:
            # the seed's `/home/user/doc**` is the prefix /home/user/doc on whole segments
            if i != len(segments) - 1 or "**" in seg[:-2] or not seg.endswith("**"):
                raise GlobError(f"'{text}': '**' must be a whole path segment (…/**/…)")
            parts.append("/" + _segment(seg[:-2]))
        else:
            parts.append("/" + _segment(seg))
    body = "".join(parts)
    if not body.endswith("(?:/.*)?"):
        body += "(?:/.*)?"  # the path itself and everything beneath it
    return Glob(text, re.compile(body, re.DOTALL))
