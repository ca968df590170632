"""What the gateway reads from disk (layer L2): the policy, tokens, and real paths.

Owns: loading a tool policy file (bounded, regular files only, through
`adapters.files`), the service token (`SERVICE_TOKEN_PATH`), the agent tokens
(`AGENT_TOKENS_DIR`: one regular file per agent, named after it, holding its token) and
the resolver the path checks use on the host (`os.path.realpath`: symbolic links
resolved component by component before `..`, dangling ones followed to where they point).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from aitherfwd.adapters.files import read_text
from aitherfwd.gateway.parse import ToolPolicyResult, parse_tool_policy
from aitherfwd.policy.diagnostics import Diagnostic, Pos, Severity

log = logging.getLogger(__name__)
AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,63}$")  # also a grant scope
MAX_TOKEN = 4096
MAX_AGENTS = 10_000


def load_tool_policy(path: Path) -> ToolPolicyResult:
    try:
        text = read_text(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        diag = Diagnostic(
            Severity.ERROR, "E-FILE", "", f"cannot read policy: {reason}", Pos(str(path), 1, 1)
        )
        return ToolPolicyResult(None, [diag])
    return parse_tool_policy(text, str(path))


def read_token(path: Path | None) -> str | None:
    """The token in the file, stripped; None when there is no file or it is blank."""
    if path is None:
        return None
    try:
        token = read_text(path, MAX_TOKEN).strip()
    except OSError as exc:
        log.warning("service token not loaded path=%s error=%s", path, exc.strerror or exc)
        return None
    return token or None


def read_agent_tokens(directory: Path) -> dict[str, str]:
    """agent name -> token. Files with names that are no valid agent name, blank files
    and anything but regular files are skipped (and logged); an unreadable directory
    gives no agents at all."""
    tokens: dict[str, str] = {}
    try:
        entries = sorted(directory.iterdir())[:MAX_AGENTS]
    except OSError as exc:  # no agent can call until it can be read (fail closed)
        log.error("agent tokens unreadable dir=%s error=%s", directory, exc.strerror or exc)
        return tokens
    for entry in entries:
        if not AGENT_NAME.match(entry.name):
            log.warning("agent token skipped file=%s reason=name", entry)
            continue
        token = read_token(entry)
        if token is None:
            log.warning("agent token skipped file=%s reason=blank", entry)
            continue
        tokens[entry.name] = token
    return tokens


def realpath(path: str) -> str:
    return os.path.realpath(path)
