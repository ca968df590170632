"""Reading policy files from disk (layer L2).

Owns: size limits, UTF-8 decoding, resolving `services_file` relative to the policy, and
turning I/O failures into located diagnostics. Hands text to the pure parser.
"""

from __future__ import annotations

from pathlib import Path

from aitherfwd.policy.diagnostics import Diagnostic, Pos, Severity
from aitherfwd.policy.parse import ParseResult, parse_policy

MAX_POLICY_BYTES = 4 * 1024 * 1024


def read_text(path: Path) -> str:
    """The file's text; raises OSError (too large, unreadable, not UTF-8)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_POLICY_BYTES + 1)
    if len(data) > MAX_POLICY_BYTES:
        raise OSError(
            f"file is larger than {MAX_POLICY_BYTES // (1024 * 1024)} MiB; "
            "split it or remove what is not policy"
        )
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
