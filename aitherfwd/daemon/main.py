"""The composition root (layer L3): builds the adapters, wires the services, runs them.

Owns: building every adapter from the daemon config and command-line overrides, handing
them to `services.wire` as ports, the startup order (adopt/apply the kernel table →
control socket → READY=1), and supervision: every background loop (the kernel writer,
housekeeping and drift repair, DNS refresh, detection, conntrack cuts, the watchdog,
reloads from signals) runs in ONE `asyncio.TaskGroup`. A loop that crashes ends the group
and the process with a non-zero exit and a log line naming it, so systemd restarts the
daemon; nothing hangs silently. The watchdog is pinged only while the kernel writer is
alive and making progress. Signals: SIGHUP reload, SIGTERM/SIGINT stop. Stopping never
touches the kernel table (fail-static).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import resource
import signal
import socket
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitherfwd.adapters import memory
from aitherfwd.adapters import systemd as sd
from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.conntrack import NetlinkConntrack
from aitherfwd.adapters.control_budget import ConnectionLimits, connection_cap
from aitherfwd.adapters.control_server import ControlServer
from aitherfwd.adapters.files import MAX_CONFIG_BYTES, load_policy, read_text
from aitherfwd.adapters.journal import SystemdJournal
from aitherfwd.adapters.kernel import NftKernel
from aitherfwd.adapters.metrics import MetricsServer
from aitherfwd.adapters.notify import Notifier
from aitherfwd.adapters.store import Store
from aitherfwd.adapters.watch import PolicyWatcher, stat_fingerprint
from aitherfwd.audit_records import DaemonStopped
from aitherfwd.clock import SystemClock
from aitherfwd.config import ConfigError, DaemonConfig, parse_config
from aitherfwd.daemon import loops
from aitherfwd.daemon.api import Api
from aitherfwd.daemon.egress import FIRST_ROUND_TIMEOUT
from aitherfwd.daemon.ports import Kernel
from aitherfwd.daemon.services import Ports, Services, wire
from aitherfwd.daemon.telemetry import Telemetry
from aitherfwd.errors import AitherError, PolicyError
from aitherfwd.policy.model import Settings
from aitherfwd.roles import Authorizer

if TYPE_CHECKING:
    from aitherfwd.adapters.natsbus import NatsBus

log = logging.getLogger(__name__)


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one (a unit's LimitNOFILE=, else 1024
    soft / 4096+ hard by default); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (soft, resource.RLIM_INFINITY):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning(
                "cannot raise the descriptor limit soft=%d hard=%d error=%s", soft, hard, exc
            )
    return soft


def load_config(path: Path | None) -> DaemonConfig:
    """The validated config; ConfigError with every problem located. The default path
    may be absent (defaults apply); a path given on the command line must exist."""
    if path is None or not path.exists():
        if path is not None and path != Path("/etc/aitherfwd/aitherfwd.toml"):
            raise ConfigError.unreadable(str(path), "no such file")
        return DaemonConfig()
    try:
        text = read_text(path, MAX_CONFIG_BYTES)  # a regular file, bounded
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError.unreadable(str(path), reason) from None
    return parse_config(
        text,
        lambda n: pwd.getpwnam(n).pw_uid,
        lambda n: grp.getgrnam(n).gr_gid,
        str(path),
        socket.gethostname(),
    )


def with_overrides(cfg: DaemonConfig, **overrides: object) -> DaemonConfig:
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


FAILPOINT_ENV = "AITHERFWD_FAILPOINT"  # a test switch; see _kernel


def adapters(cfg: DaemonConfig) -> Ports:
    """The real adapters behind the daemon's ports (the fleet's first: a missing client
    library stops the start before anything is opened)."""
    bus = _bus(cfg)
    return Ports(
        kernel=_kernel(NftKernel()),
        conntrack=NetlinkConntrack(),
        systemd=sd.SystemdNotify(),
        notifier=Notifier(),
        clock=SystemClock(),
        store=Store(cfg.state_dir),
        audit=AuditLog(cfg.audit_log, cfg.audit_max_bytes, cfg.audit_keep),
        load_policy=load_policy,
        journal=SystemdJournal(),
        bus=bus,
    )


def _bus(cfg: DaemonConfig) -> NatsBus | None:
    """The fleet's bus when [fleet] is configured; its client library is an optional
    dependency, whose absence is a clear error at start."""
    if cfg.fleet is None:
        return None
    from aitherfwd.adapters import natsbus  # noqa: PLC0415 - a daemon without a fleet needs none

    if not natsbus.available():
        raise ConfigError(natsbus.NO_CLIENT, code="E-FLEET-NO-CLIENT")  # exit 64
    return natsbus.NatsBus(cfg.fleet)


def _kernel(nft: NftKernel) -> Kernel:
    """The kernel (libnftables for the ruleset, netlink for elements), unless the
    environment (only root sets a unit's) asks for the `kernel-writer` failpoint: the first
    element write then fails unexpectedly, which must end the process so systemd restarts
    it (tests/systemd shows that it does)."""
    if os.environ.get(FAILPOINT_ENV) != "kernel-writer":
        return nft
    from aitherfwd.testing import FailingWrites  # noqa: PLC0415

    log.warning(
        "failpoint %s=kernel-writer is set: the first element write will fail", FAILPOINT_ENV
    )
    return FailingWrites(nft)


async def run(cfg: DaemonConfig, ports: Ports | None = None) -> int:
    """The daemon until SIGTERM (0) or until a background task fails (1); an invalid
    policy at the cold start raises PolicyError. `ports` defaults to the real adapters;
    tests pass fakes."""
    ports = ports or adapters(cfg)
    s = wire(ports, cfg.policy, Authorizer(cfg.roles), cfg.conntrack_resync_interval, cfg.fleet)
    inner = getattr(ports.kernel, "inner", ports.kernel)
    if isinstance(inner, NftKernel):
        inner.observer = s.stats.transaction
    try:
        async with asyncio.TaskGroup() as tg:
            await Supervisor(cfg, s, tg).serve()
    except BaseExceptionGroup as group:
        return _failed(group)
    finally:
        if s.fleet is not None:
            await s.fleet.close()
        await s.writer.close()
        close = getattr(ports.notifier, "close", None)
        if close is not None:
            await close()
        ports.store.close()
    return 0


def _failed(group: BaseExceptionGroup[BaseException]) -> int:
    """What ended the task group: an invalid policy at the cold start is re-raised (exit 3,
    the kernel keeps what it enforces); anything else is logged and exits 1, so systemd
    restarts the daemon."""
    invalid, rest = group.split(PolicyError)
    if invalid is not None:
        raise invalid.exceptions[0] from None
    for exc in rest.exceptions if rest is not None else ():
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise exc
        log.critical(
            "a background task failed; exiting so systemd restarts the daemon error=%r",
            exc,
            exc_info=exc,
        )
    return 1


class Supervisor:
    """The daemon's life inside its task group: start, serve until told to stop, stop."""

    def __init__(self, cfg: DaemonConfig, services: Services, tg: asyncio.TaskGroup) -> None:
        self.cfg, self.s, self.tg = cfg, services, tg
        self.tasks: list[asyncio.Task[Any]] = []
        self.stopping = asyncio.Event()
        # rejected-request noise, apart from the audit trail (daemon/rejections.py)
        noise = cfg.requests_log or cfg.audit_log.with_name("requests.jsonl")
        self.noise = AuditLog(noise, cfg.audit_max_bytes, cfg.audit_keep)

    def spawn(self, name: str, coro: Awaitable[Any]) -> None:
        self.tasks.append(self.tg.create_task(_named(name, coro), name=name))

    async def serve(self) -> None:
        cfg, s = self.cfg, self.s
        memory.fixed_mmap_threshold()  # before the cold start's large buffers
        self.spawn("kernel-writer", s.writer.run())
        gen = await s.generations.cold_start()
        memory.settle_after_start()
        await _first_dns_round(s)
        server, api = self._control_server()
        await server.start()
        metrics = await _metrics(cfg.metrics_listen, Telemetry(s))
        watcher = PolicyWatcher(
            lambda: [s.generations.policy_path, *_includes(s)],
            lambda: s.generations.reload(trigger="inotify"),
            lambda: float(gen_settings(s).rule_reload_interval),
        )
        watcher.start()
        geo_watch = PolicyWatcher(  # country and list sources: refreshed on change
            s.geo.files,
            s.geo.changed,
            lambda: float(gen_settings(s).rule_reload_interval),
            fingerprint=stat_fingerprint,
        )
        geo_watch.start()
        self.spawn("geo-sets", s.geo.run())
        self._signals()
        self.spawn("housekeeping", loops.housekeeping(s, cfg.drift_check_interval))
        self.spawn("egress-dns", s.egress.run())
        self.spawn("detection", s.detection.run())
        if s.journal is not None:
            self.spawn("journal", s.journal.run())
        self.spawn("conntrack-cuts", s.blocks.run_cuts())
        self.spawn("audit-rejections", loops.flush_audit(api, s))
        if s.fleet is not None:
            self.spawn("fleet", s.fleet.run())
        interval = sd.watchdog_interval()
        if interval:
            self.spawn("watchdog", loops.watchdog(s, interval))
        log.info(
            "aitherfwd ready generation=%d socket=%s pid=%d", gen.number, cfg.socket, os.getpid()
        )
        s.ports.systemd.ready(s.generations.status_line())
        try:
            await self.stopping.wait()
        finally:
            s.ports.systemd.stopping()
            log.info("stopping; table inet aitherfwd stays in force (fail-static)")
            watcher.close()
            geo_watch.close()
            await server.close()
            if metrics is not None:
                await metrics.close()
            for task in self.tasks:
                task.cancel()
            api.rejections.flush(s.ports.clock.now(), final=True)
            if s.audit_budget is not None:
                s.audit_budget.flush(s.ports.clock.now(), final=True)
            self.noise.close()
            gen_now = s.generations.generation
            s.ports.audit.write(
                s.ports.clock.now(), DaemonStopped(generation=gen_now.number if gen_now else 0)
            )
            s.ports.audit.close()

    def _control_server(self) -> tuple[ControlServer, Api]:
        """The API as handler and gate, with the connection budgets the descriptor limit
        allows and the body budgets of the config."""
        cfg, s, lim = self.cfg, self.s, self.cfg.limits
        api = Api(
            s,
            s.authorizer,
            limits=lim,
            max_body=cfg.max_body_bytes,
            noise=self.noise,
            reject_interval=cfg.audit_reject_interval,
        )
        wanted = ConnectionLimits(
            lim.max_connections, lim.connections_per_uid, lim.admin_connections
        )
        nofile = raise_nofile()
        conns = connection_cap(wanted, nofile)
        if conns != wanted:
            log.warning(
                "control connections lowered to fit the descriptor limit nofile=%d "
                "max_connections=%d admin_connections=%d",
                nofile,
                conns.total,
                conns.admin_reserve,
            )
        group = grp.getgrnam(cfg.socket_group).gr_gid if cfg.socket_group else None
        server = ControlServer(
            cfg.socket,
            api,
            mode=cfg.socket_mode,
            group=group,
            gate=api,
            connections=conns,
            body_budget=lim.body_bytes_in_flight,
            body_admin_reserve=lim.body_bytes_admin,
        )
        return server, api

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def _sighup(self) -> None:
        """Reload the policy and reopen the audit log (logrotate moved it); the reload is
        a task of the group like every other."""
        self.s.ports.audit.reopen()
        self.noise.reopen()
        if not self.stopping.is_set():
            self.spawn("sighup-reload", self.s.generations.reload(trigger="sighup"))


async def _named(name: str, coro: Awaitable[Any]) -> Any:
    """Run a loop; if it fails, say which one before the group ends the process."""
    try:
        return await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.critical("task failed task=%s", name)
        raise


def gen_settings(s: Services) -> Any:
    gen = s.generations.generation
    return gen.policy.settings if gen is not None else _DEFAULT_SETTINGS


async def _first_dns_round(s: Services) -> None:
    """Resolve the allowlisted names before serving (bounded): a fresh table would
    otherwise refuse them until the refresher's first turn."""
    try:
        await asyncio.wait_for(s.egress.dns.refresh(first=True), FIRST_ROUND_TIMEOUT)
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


def _includes(s: Services) -> list[Path]:
    gen = s.generations.generation
    return [Path(p) for p in gen.policy.includes] if gen else []


_DEFAULT_SETTINGS = Settings()


def main(cfg: DaemonConfig) -> int:
    handler = sd.journal_handler()
    if handler is not None:
        logging.getLogger().handlers = [handler]
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(cfg))
    return 0
