"""Reading the files the daemon reads — policy, services file, config (layer L2).

Owns: opening them as regular files only (`O_NONBLOCK`, then `fstat`: a FIFO, a device, a
socket or a directory is refused at once, so a FIFO planted at the policy path never
blocks), size limits checked on `fstat` before reading and enforced again while reading
(a file that grows meanwhile is cut, never read whole), UTF-8 decoding, resolving
`services_file` relative to the policy, and turning I/O failures into located
diagnostics. Hands text to the pure parser. Blocking I/O: the daemon calls these off its
event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aitherfwd.policy.diagnostics import Diagnostic, Pos, Severity
from aitherfwd.policy.parse import ParseResult, parse_policy
from aitherfwd.policy.source import MAX_TEXT

MAX_POLICY_BYTES = MAX_TEXT  # a policy or a services file
MAX_CONFIG_BYTES = 1 << 20  # the daemon's TOML config
_CHUNK = 1 << 16
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _too_large(limit: int) -> OSError:
    return OSError(
        f"file is larger than {limit} bytes ({limit / (1 << 20):g} MiB); "
        "split it or remove what is not policy"
    )


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` (default
    MAX_POLICY_BYTES); raises OSError for anything else (not regular, too large)."""
    limit = MAX_POLICY_BYTES if limit is None else limit
    before = os.stat(path)  # refuse devices before opening them (an open can have effects)
    if not stat.S_ISREG(before.st_mode):
        raise OSError(f"not a regular file ({_kind(before.st_mode)})")
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)  # what was opened, whatever the path points at now
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int | None = None) -> str:
    """The file's text; raises OSError (not a regular file, too large, unreadable, not
    UTF-8)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OSError(f"not UTF-8 text (byte {exc.start})") from None


def load_policy(path: Path) -> ParseResult:
    """Read, parse and validate the policy at `path`, and any services file it names."""
    try:
        text = read_text(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        diag = Diagnostic(
            Severity.ERROR, "E-FILE", "", f"cannot read policy: {reason}", Pos(str(path), 1, 1)
        )
        return ParseResult(None, [diag])

    def read_include(rel: str) -> tuple[str, str]:
        target = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        return str(target), read_text(target)

    return parse_policy(text, str(path), read_include)
