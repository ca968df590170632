"""Running the gateway (layer L3; the only importer of uvicorn).

Owns: wiring the real adapters into a `Gateway` (its audit lines written by a thread, off
the event loop: adapters/audit_queue.py), hot reload (inotify on the policy's directory
through `adapters.watch`, with a slow poll as a fallback), systemd socket activation
(`LISTEN_FDS`: the listening socket is fd 3, so the service can run with
`PrivateNetwork=yes`) and uvicorn. A policy that is invalid at start exits 3 with every
problem printed; at reload it is kept out and the running one stays.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import socket
from pathlib import Path

import uvicorn

from aitherfwd.adapters.audit_queue import QueuedAudit
from aitherfwd.adapters.watch import PolicyWatcher
from aitherfwd.clock import SystemClock
from aitherfwd.errors import PolicyError
from aitherfwd.gateway.app import Evaluate, build_app
from aitherfwd.gateway.auditline import DecisionAudit
from aitherfwd.gateway.config import GatewayConfig, parse_bind
from aitherfwd.gateway.files import load_tool_policy, read_agent_tokens, read_token, realpath
from aitherfwd.gateway.grants import DaemonGrants
from aitherfwd.gateway.service import Gateway
from aitherfwd.policy.diagnostics import report_lines

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
MAX_CONNECTIONS = 1024  # connections and requests in flight (uvicorn answers 503 beyond)
KEEP_ALIVE_SECONDS = 5  # an idle kept-alive connection is closed after this
SD_LISTEN_FDS_START = 3


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None. Its family is
    read from the descriptor (uvicorn's own `fd=` would take it for AF_UNIX)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = os.environ.get("LISTEN_FDS", "0")
    if not (count.isdigit() and int(count) >= 1):
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for children
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def event_loop() -> str:
    """uvloop when it is installed (python3-uvloop, a Depends of the .deb): it cuts the
    server's share of every call (docs/benchmarks-gateway.md); else asyncio's own loop."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def server_config(app: Evaluate, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # explicit: Debian's python3-httptools (0.1) is too old for this uvicorn
        http="h11",
        loop=event_loop(),
        # bounds against a flood of idle or slow local connections: beyond, 503
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        access_log=False,
        server_header=False,
        log_config=None,
        # uvicorn 0.17 (Debian's) wraps the app in its per-message trace logger when the
        # level of `uvicorn.error` is NOTSET, which it is without log_config: say the level
        log_level=logging.getLogger().getEffectiveLevel(),
        # no X-Forwarded-For rewriting: callers are local, nothing behind a proxy, and a
        # caller must not choose the client address it is seen with
        proxy_headers=False,
    )


def build(cfg: GatewayConfig) -> Gateway:
    result = load_tool_policy(cfg.policy)
    for line in report_lines(result.diagnostics):
        log.warning("%s", line)
    if result.policy is None:
        raise PolicyError(f"{cfg.policy}: invalid tool policy; not starting")
    agents = cfg.agent_tokens_dir
    tokens = read_agent_tokens(agents) if agents is not None else None
    return Gateway(
        result.policy,
        load=lambda: load_tool_policy(cfg.policy),
        clock=SystemClock(),
        audit=QueuedAudit(DecisionAudit(cfg.audit_log)),  # written off the event loop
        resolve=realpath,
        grants=DaemonGrants(cfg.aitherfwd_socket),
        agent_tokens=tokens,
        load_agent_tokens=(lambda: read_agent_tokens(agents)) if agents is not None else None,
        service_token=read_token(cfg.service_token),
    )


def run(cfg: GatewayConfig) -> int:
    gateway = build(cfg)
    if isinstance(gateway.audit, QueuedAudit):
        gateway.audit.on_tick = gateway.audit_tick  # rate-limited calls' counted lines
    host, port = parse_bind(cfg.bind)
    watchers: list[PolicyWatcher] = []

    async def changed() -> None:
        gateway.reload("inotify")

    def files() -> list[Path]:
        return [cfg.policy]

    async def start_watch() -> None:
        watcher = PolicyWatcher(files, changed, lambda: POLL_SECONDS)
        watcher.start()
        watchers.append(watcher)

    async def stop_watch() -> None:
        for w in watchers:
            w.close()

    async def close_audit() -> None:
        if isinstance(gateway.audit, QueuedAudit):
            gateway.audit.close()  # the queued lines are written before the process ends

    app = build_app(gateway, on_startup=[start_watch], on_shutdown=[stop_watch, close_audit])
    activated = activated_socket()
    config = server_config(app, host, port)
    where = activated.getsockname() if activated is not None else cfg.bind
    log.info(
        "gateway listening on=%s activated=%s loop=%s", where, activated is not None, config.loop
    )
    gc.freeze()  # the policy and the modules: never scanned again by the collector
    uvicorn.Server(config).run(sockets=[activated] if activated is not None else None)
    return 0
