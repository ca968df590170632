"""Wiring the daemon's services from their ports (layer L3).

Owns: `Ports` (everything from outside: kernel, conntrack, systemd, notifier, clock, store,
audit log, policy loader) and `wire(ports, …) -> Services`, which builds the services —
blocks, reputation, egress, generations, queries, detection, fleet — injects each one's
dependencies and subscribes them to policy changes. The composition root (daemon/main.py)
calls it with the real adapters, unit tests with the fakes of aitherfwd/testing.py: both
get the same graph. `Services` is a plain record of the services; it holds no logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aitherfwd.adapters.audit import AuditLog
from aitherfwd.adapters.store import Store
from aitherfwd.clock import Clock
from aitherfwd.daemon.audit_budget import AuditBudget
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.detection import Detection
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.generations import Generations, Loader
from aitherfwd.daemon.geosets import GeoSets
from aitherfwd.daemon.journal import JournalService
from aitherfwd.daemon.ports import Bus, Conntrack, Journal, Kernel, Notifications, Systemd
from aitherfwd.daemon.queries import Queries
from aitherfwd.daemon.reputation import ReputationService
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.fleet.settings import FleetSettings
from aitherfwd.roles import Authorizer
from aitherfwd.stats import Stats

if TYPE_CHECKING:
    from aitherfwd.daemon.fleet import FleetService

DEFAULT_RESYNC_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class Ports:
    kernel: Kernel
    conntrack: Conntrack
    systemd: Systemd
    notifier: Notifications
    clock: Clock
    store: Store
    audit: AuditLog
    load_policy: Loader
    # NFLOG and conntrack sockets of the namespace the daemon runs in (detection); the
    # fakes turn them off so a unit test never listens to its host's kernel
    listen_kernel: bool = True
    journal: Journal | None = None  # None: journal sources are not read
    bus: Bus | None = None  # the fleet's (daemon/fleet.py); None: no [fleet] config


@dataclass(frozen=True, slots=True)
class Services:
    ports: Ports
    stats: Stats
    writer: KernelWriter
    authorizer: Authorizer
    blocks: BlockService
    reputation: ReputationService
    egress: EgressRuntime
    generations: Generations
    queries: Queries
    detection: Detection
    started_at: float
    geo: GeoSets  # country and list sets (daemon/geosets.py)
    journal: JournalService | None = None  # threats read from the journal
    fleet: FleetService | None = None
    audit_budget: AuditBudget | None = None  # folds automated records in a flood


def wire(
    ports: Ports,
    policy_path: Path,
    authorizer: Authorizer | None = None,
    resync_interval: float = DEFAULT_RESYNC_INTERVAL,
    fleet: FleetSettings | None = None,
) -> Services:
    stats = Stats()  # for metrics only (daemon/telemetry.py)
    clock, store, audit = ports.clock, ports.store, ports.audit
    writer = KernelWriter(ports.kernel, monotonic=clock.monotonic)
    authorizer = authorizer or Authorizer({})
    admins = authorizer  # an administrator's records are never folded

    def is_admin(actor: Mapping[str, int]) -> bool:
        return admins.allows("admin", actor.get("uid", -1), actor.get("gid", -1), ())

    budget = AuditBudget(audit, exempt=is_admin)  # automated blocks, expiries, grants
    blocks = BlockService(clock, writer, store, budget, ports.conntrack, stats)
    reputation = ReputationService(clock, blocks, store, budget, ports.notifier, stats)
    egress = EgressRuntime(clock, writer, store, budget)
    egress.on_change = stats.sandbox  # live grants for the metrics
    egress.authorizer = authorizer  # the sandbox role's max_ttl
    generations = Generations(
        policy_path,
        ports.load_policy,
        clock,
        writer,
        store,
        audit,
        ports.systemd,
        ports.conntrack,
        blocks,
        egress,
        stats,
    )
    detection = Detection(
        clock, audit, reputation.threats, resync_interval, listen=ports.listen_kernel
    )
    blocks.may_hold = detection.may_hold  # no conntrack cut for a source it knows holds none
    journal = JournalService(clock, ports.journal, store, reputation.threats)
    generations.listeners += [
        blocks.configure,
        reputation.configure,
        egress.configure,
        detection.configure,
        journal.configure,
    ]
    geo = GeoSets(clock, writer, audit)
    generations.listeners.append(geo.configure)
    generations.table_repaired.append(geo.table_repaired)
    reputation.load()
    queries = Queries(clock, generations, blocks, egress, stats, audit=audit)
    queries.geo = geo
    fleet_service = _fleet(ports, fleet, blocks, reputation, generations)
    return Services(
        ports,
        stats,
        writer,
        authorizer,
        blocks,
        reputation,
        egress,
        generations,
        queries,
        detection,
        clock.now(),
        geo,
        journal,
        fleet_service,
        budget,
    )


def _fleet(
    ports: Ports,
    fleet: FleetSettings | None,
    blocks: BlockService,
    rep: ReputationService,
    gens: Generations,
) -> FleetService | None:
    if fleet is None or ports.bus is None:
        return None
    # imported here: a daemon without a fleet does not carry the fleet's modules
    from aitherfwd.adapters.outbox import Outbox  # noqa: PLC0415
    from aitherfwd.daemon.fleet import FleetService  # noqa: PLC0415
    from aitherfwd.daemon.fleet_policy import FleetPolicy  # noqa: PLC0415

    outbox = Outbox(ports.store, fleet.backlog)
    service = FleetService(fleet, ports.bus, ports.clock, blocks, outbox, ports.audit, rep.threats)
    rep.on_threats = service.share_threats
    service.policy = FleetPolicy(ports.bus, gens, ports.load_policy, ports.store.path.parent)
    return service
