"""Error types with stable codes and the process exit codes they map to (layer L0).

Owns: the exception hierarchy every layer raises and the CLI turns into exit codes. One
constructor everywhere: `SomeError(message, *, code=..., **context)` — the class names the
kind of failure and carries a default code; a raise site that means something more precise
passes `code=` (every code is registered in `aitherfwd.codes`, which also says which HTTP
status the control API answers with — statuses live there, never on an exception).
Must not import anything from aitherfwd.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; stable, documented in the README."""

    OK = 0
    FAILURE = 1
    CHANGES = 2  # `plan`: the kernel differs from the policy
    INVALID_POLICY = 3
    KERNEL = 4  # the kernel refused a transaction, or libnftables is unusable
    USAGE = 64  # bad command line or an invalid daemon config


class AitherError(Exception):
    """Base class: every error carries a stable code such as ``E-APPLY``."""

    code = "E-INTERNAL"
    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, code: str | None = None, **context: object) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.context = context  # structured details for logs and audit (never HTTP statuses)


class PolicyError(AitherError):
    """The policy could not be loaded or is invalid; diagnostics carry the details."""

    code = "E-POLICY"
    exit_code = ExitCode.INVALID_POLICY


class ApplyError(AitherError):
    """The kernel refused a transaction; nothing of it was applied."""

    code = "E-APPLY"
    exit_code = ExitCode.KERNEL


class KernelUnavailableError(AitherError):
    """libnftables or netlink cannot be used (missing library, no CAP_NET_ADMIN)."""

    code = "E-KERNEL-UNAVAILABLE"
    exit_code = ExitCode.KERNEL


class RequestError(AitherError):
    """A control request that is malformed, names nothing, or may not be done; the code
    says which (`E-SCHEMA`, `E-NOT-BLOCKED`, `E-FORBIDDEN`, …)."""

    code = "E-SCHEMA"
