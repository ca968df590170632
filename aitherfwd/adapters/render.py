"""Render a ruleset in nftables' own text syntax by asking the kernel (layer L2).

Owns: a forked child that enters a private, empty network namespace (and a user namespace
when not root), applies the JSON ruleset there through libnftables and lists it as text.
The text is therefore exactly what the kernel holds — no hand-written renderer to drift.
Nothing in the caller's namespace is touched; the scratch namespace dies with the child.
"""

from __future__ import annotations

import ctypes
import json
import os
import time

from aitherfwd.compiler import Ruleset
from aitherfwd.errors import ApplyError, KernelUnavailableError
from aitherfwd.nft import names as n

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def render_nft_text(ruleset: Ruleset) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_fd)
        status = 1
        try:
            payload = {"ok": True, "text": _child(ruleset)}
            status = 0
        except Exception as exc:
            payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(payload))
        os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    try:
        result = json.loads(data)
    except ValueError:
        raise KernelUnavailableError("the rendering helper died without an answer") from None
    if not result["ok"]:
        raise KernelUnavailableError(
            f"cannot render nft text: {result['error']}; use --format json"
        )
    return str(result["text"])


def _child(ruleset: Ruleset) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    os.environ["TZ"] = "UTC"  # time windows are UTC; show them so
    time.tzset()
    from aitherfwd.adapters.nft import Nft  # noqa: PLC0415  (after entering the namespace)

    nft = Nft()
    try:
        nft.run(ruleset.commands())
    except ApplyError as exc:
        raise OSError(f"the kernel refused the ruleset: {exc.message}") from exc
    ctx = nft._ctx
    ctx.set_json_output(False)
    rc, text, error = ctx.cmd(f"list table {n.FAMILY} {n.TABLE}")
    if rc != 0:
        raise OSError(error.strip())
    return str(text)
