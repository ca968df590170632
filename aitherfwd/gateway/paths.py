"""Path checks of a tool call (layer L1, pure: the resolver is passed in).

Owns: the canonical forms of a path a tool may end up opening, and the verdict of the
entry's denylist and allowlist over all of them. Where the seed let things through, the
gateway does the safe thing:

- every form must pass: the raw text (what the tool receives) AND each percent-decoded
  form (the seed checked only the decoded one and handed the tool the raw one);
- `..` is resolved after symbolic links, as the kernel does (`allowed/link/../secret`
  is where `link` points, then up) AND lexically (a tool that cleans before opening);
- a dangling symbolic link counts as where it points (the resolver follows it);
- null bytes, Unicode look-alikes of `/` and `.`, and relative paths are refused when
  the tool has path rules (a relative path means whatever the tool's working directory
  makes of it).

A resolver is `resolve(path) -> str`: `os.path.realpath` on the host (`gateway.files`),
a fake in tests. It may raise OSError (the check is refused).
"""

from __future__ import annotations

import posixpath
import unicodedata
import urllib.parse
from collections.abc import Callable

from aitherfwd.gateway.model import ToolEntry

Resolver = Callable[[str], str]
MAX_PATH = 4096
_CONFUSABLES = frozenset("\u2044\u2215\u2216\u29f8\uff0e\uff0f\uff3c\ufffd\u2024\u2025\u2026")


def _decodings(raw: str) -> list[str] | str:
    out = [raw]
    for _ in range(4):
        try:
            decoded = urllib.parse.unquote(out[-1], errors="strict")
        except UnicodeDecodeError:
            return "path contains invalid percent-encoding"
        if decoded == out[-1]:
            return out
        out.append(decoded)
    return "path is percent-encoded too deeply"


def forms(raw: str) -> list[str] | str:
    """The texts a tool may take `raw` for (raw, then each decoding), or why it is refused."""
    if len(raw) > MAX_PATH:
        return f"path is longer than {MAX_PATH} characters"
    out = _decodings(raw)
    if isinstance(out, str):
        return out
    for text in out:
        if "\0" in text:
            return "path contains null byte"
        if any(ch in _CONFUSABLES or unicodedata.category(ch) in ("Mn", "Me") for ch in text):
            return "path contains unicode path confusable"
        if "\\" in text:
            return "path contains a backslash"
    return out


def check_path(entry: ToolEntry, raw: str, resolve: Resolver) -> str | None:
    """The reason this path is refused for this tool, or None."""
    texts = forms(raw)
    if isinstance(texts, str):
        return f"invalid path: {texts}"
    candidates: list[str] = []
    for text in texts:
        if not text.startswith("/"):
            return "invalid path: path is not absolute"
        lexical = posixpath.normpath(text)
        lexical = "/" + lexical.lstrip("/")  # POSIX keeps a leading "//"; we do not
        try:
            resolved = resolve(text)
        except (OSError, ValueError) as exc:
            return f"invalid path: cannot resolve path ({type(exc).__name__})"
        candidates += [lexical, resolved]
    for pattern in entry.paths_denylist:
        if any(pattern.matches(c) for c in candidates):
            return "path matches denylist"
    if entry.paths_allowlist:
        for c in candidates:
            if not any(pattern.matches(c) for pattern in entry.paths_allowlist):
                return "path not in allowlist"
    return None
