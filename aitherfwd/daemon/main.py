"""The composition root (layer L3): wires adapters and the daemon, runs the event loop.

Owns: building every component from the daemon config and command-line overrides, the
startup order (adopt/apply the kernel table → control socket → READY=1), the timers
(drift repair, watchdog), signals (SIGHUP reload, SIGTERM/SIGINT stop) and fail-static
shutdown: stopping never touches the kernel table.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import signal
from dataclasses import replace
from pathlib import Path

from aitherfwd.adapters import systemd as sd
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.control_server import ControlServer
from aitherfwd.adapters.metrics import MetricsServer
from aitherfwd.adapters.nft import Nft
from aitherfwd.adapters.notify import Notifier
from aitherfwd.adapters.store import Store
from aitherfwd.adapters.watch import PolicyWatcher
from aitherfwd.clock import SystemClock
from aitherfwd.config import Authorizer, ConfigError, DaemonConfig, parse_config
from aitherfwd.daemon.app import Daemon
from aitherfwd.daemon.detection import Detection
from aitherfwd.daemon.egress import FIRST_ROUND_TIMEOUT
from aitherfwd.daemon.routes import Api
from aitherfwd.daemon.telemetry import Telemetry
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.errors import AitherError

log = logging.getLogger(__name__)
BULK_BODY_BYTES = 32 << 20  # POST /v1/blocks takes up to 200,000 blocks in one request


def load_config(path: Path | None) -> DaemonConfig:
    """The validated config; ConfigError with every problem located. The default path
    may be absent (defaults apply); a path given on the command line must exist."""
    if path is None or not path.exists():
        if path is not None and path != Path("/etc/aitherfwd/aitherfwd.toml"):
            raise ConfigError.unreadable(str(path), "no such file")
        return DaemonConfig()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError.unreadable(str(path), reason) from None
    return parse_config(
        text, lambda n: pwd.getpwnam(n).pw_uid, lambda n: grp.getgrnam(n).gr_gid, str(path)
    )


def with_overrides(cfg: DaemonConfig, **overrides: object) -> DaemonConfig:
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


async def run(cfg: DaemonConfig) -> int:
    clock = SystemClock()
    writer = KernelWriter(Nft())
    writer.start()
    store = Store(cfg.state_dir)
    audit = AuditLog(cfg.audit_log, cfg.audit_max_bytes, cfg.audit_keep)
    notifier = Notifier()
    daemon = Daemon(cfg.policy, clock, writer, store, audit, notifier)
    writer.nft.observer = daemon.stats.transaction
    try:
        gen = await daemon.cold_start()
    except AitherError:
        await writer.close()
        raise
    group = grp.getgrnam(cfg.socket_group).gr_gid if cfg.socket_group else None
    authorizer = Authorizer(cfg.roles)
    daemon.egress.authorizer = authorizer  # the sandbox role's max_ttl
    await _first_dns_round(daemon)
    server = ControlServer(
        cfg.socket,
        Api(daemon, authorizer),
        mode=cfg.socket_mode,
        group=group,
        max_body=cfg.max_body_bytes,
        bulk=(("POST", "/v1/blocks", BULK_BODY_BYTES),),
    )
    await server.start()
    metrics = await _metrics(cfg.metrics_listen, Telemetry(daemon))
    watcher = PolicyWatcher(
        lambda: [daemon.policy_path, *_includes(daemon)],
        lambda: daemon.reload(trigger="inotify"),
        lambda: float(
            daemon.generation.policy.settings.rule_reload_interval if daemon.generation else 30
        ),
    )
    watcher.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _sighup(daemon, audit))
    tasks = [loop.create_task(_drift(daemon, cfg.drift_check_interval), name="drift")]
    tasks.append(loop.create_task(daemon.egress.run(), name="egress-dns"))
    daemon.detection = Detection(daemon, cfg.conntrack_resync_interval)
    await daemon.detection.start()
    interval = sd.watchdog_interval()
    if interval:
        tasks.append(loop.create_task(_watchdog(interval), name="watchdog"))
    log.info("aitherfwd ready generation=%d socket=%s pid=%d", gen.number, cfg.socket, os.getpid())
    sd.ready(daemon.status_line())
    await stop.wait()
    sd.stopping()
    log.info("stopping; table inet aitherfwd stays in force (fail-static)")
    for task in tasks:
        task.cancel()
    watcher.close()
    await daemon.detection.close()
    await server.close()
    if metrics is not None:
        await metrics.close()
    await notifier.close()
    await writer.close()
    audit.write(
        clock.now(),
        "daemon_stopped",
        generation=daemon.generation.number if daemon.generation else 0,
    )
    audit.close()
    store.close()
    return 0


async def _first_dns_round(daemon: Daemon) -> None:
    """Resolve the allowlisted names before serving (bounded): a fresh table would
    otherwise refuse them until the refresher's first turn."""
    try:
        await asyncio.wait_for(daemon.egress.refresh(first=True), FIRST_ROUND_TIMEOUT)
    except (TimeoutError, AitherError) as exc:
        log.warning("first DNS round incomplete; the refresher goes on error=%s", exc)


async def _metrics(listen: str, telemetry: Telemetry) -> MetricsServer | None:
    """The Prometheus endpoint; one that cannot listen is logged, never fatal."""
    if not listen:
        return None
    try:
        metrics = MetricsServer(listen, telemetry.fresh_snapshot)
        await metrics.start()
    except (OSError, ValueError) as exc:
        log.error("metrics endpoint not started listen=%s error=%s", listen, exc)
        return None
    return metrics


def _sighup(daemon: Daemon, audit: AuditLog) -> None:
    """Reload the policy and reopen the audit log (logrotate moved it)."""
    audit.reopen()
    asyncio.get_running_loop().create_task(daemon.reload(trigger="sighup"))


def _includes(daemon: Daemon) -> list[Path]:
    gen = daemon.generation
    return [Path(p) for p in gen.policy.includes] if gen else []


FULL_CHECK_EVERY = 60.0  # seconds: a listing-based check even when the generation says "ours"


async def _drift(daemon: Daemon, interval: float) -> None:
    last_full = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(interval)
        now = asyncio.get_running_loop().time()
        full = now - last_full >= FULL_CHECK_EVERY
        last_full = now if full else last_full
        try:
            await daemon.check_drift(full=full)
        except AitherError as exc:
            log.error("drift check failed code=%s error=%s", exc.code, exc.message)


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 only while the event loop turns: a stalled loop gets restarted."""
    while True:
        sd.watchdog()
        await asyncio.sleep(interval)


def main(cfg: DaemonConfig) -> int:
    handler = sd.journal_handler()
    if handler is not None:
        logging.getLogger().handlers = [handler]
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(cfg))
    return 0
