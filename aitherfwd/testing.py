"""In-memory fakes of the daemon's ports, shipped for tests (in the spirit of httpcore's mock
backend and structlog's `testing` module).

Owns: `FakeConntrack`, `FakeSystemd`, `FakeNotifier`, `FailingWrites`, `FakeJournal`
(aitherfwd/fakejournal.py), and `fake_daemon`,
which wires the daemon's real services to these fakes (plus a real SQLite store and audit
log in a directory the caller gives); re-exports `FakeKernel` (aitherfwd/fakekernel.py),
`FakeBus` and `FakeJetStream` (aitherfwd/fakebus.py, the fleet's bus) and
the one `FakeClock` (aitherfwd/clock.py). With them the whole control plane runs in unit
tests without privilege.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitherfwd.clock import FakeClock
from aitherfwd.fakebus import FakeBus, FakeJetStream
from aitherfwd.fakejournal import FakeJournal
from aitherfwd.fakekernel import FakeKernel
from aitherfwd.policy.model import IPAddress, NotifySettings
from aitherfwd.reconcile import Observed

Json = dict[str, Any]

if TYPE_CHECKING:
    from aitherfwd.daemon.services import Services
    from aitherfwd.fleet.settings import FleetSettings
    from aitherfwd.roles import Authorizer

__all__ = [
    "FailingWrites",
    "FakeBus",
    "FakeClock",
    "FakeConntrack",
    "FakeDaemon",
    "FakeJetStream",
    "FakeJournal",
    "FakeKernel",
    "FakeNotifier",
    "FakeSystemd",
    "fake_daemon",
]


class FailingWrites:
    """A `Kernel` that passes everything to `inner` but fails the first element write with
    an unexpected exception (a bug behind the port): the failpoint behind
    `AITHERFWD_FAILPOINT=kernel-writer`, with which the boot test shows that systemd brings
    back a daemon whose writer died."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def run(self, commands: list[Json]) -> list[Json]:
        if any("element" in body for c in commands for body in c.values()):
            raise RuntimeError("failpoint kernel-writer: an element write failed unexpectedly")
        result: list[Json] = self.inner.run(commands)
        return result

    def observe(self) -> Observed:
        observed: Observed = self.inner.observe()
        return observed

    def set_elements(self, set_name: str) -> list[Any]:
        elements: list[Any] = self.inner.set_elements(set_name)
        return elements

    def generation(self) -> int | None:
        gen: int | None = self.inner.generation()
        return gen

    def updates_timeouts(self) -> bool:
        updates: bool = self.inner.updates_timeouts()
        return updates

    def run_quick(self, commands: list[Json]) -> bool:
        return False  # every write through `run`, where the failpoint is


class FakeConntrack:
    """Implements the `Conntrack` port: `peers` are the established admin sessions."""

    def __init__(self) -> None:
        self.peers: set[tuple[IPAddress, int]] = set()
        self.deleted: list[IPAddress] = []
        self.fail = False

    def established_peers(self, ports: Collection[int]) -> set[tuple[IPAddress, int]]:
        if self.fail:
            raise OSError("conntrack unavailable")
        return {(a, p) for a, p in self.peers if p in ports}

    def delete_source(self, address: IPAddress) -> int:
        self.deleted.append(address)
        return 1


class FakeSystemd:
    """Implements the `Systemd` port: records every notification."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def ready(self, status: str) -> None:
        self.messages.append(f"READY=1 STATUS={status}")

    def reloading(self) -> None:
        self.messages.append("RELOADING=1")

    def status(self, text: str) -> None:
        self.messages.append(f"STATUS={text}")

    def stopping(self) -> None:
        self.messages.append("STOPPING=1")

    def watchdog(self) -> None:
        self.messages.append("WATCHDOG=1")

    @property
    def last_status(self) -> str:
        return next(
            (m.split("STATUS=", 1)[1] for m in reversed(self.messages) if "STATUS=" in m), ""
        )


@dataclass
class FakeNotifyStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


class FakeNotifier:
    """Implements the `Notifications` port: keeps what would have been sent."""

    def __init__(self) -> None:
        self.settings = NotifySettings()
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._stats = FakeNotifyStats()

    @property
    def stats(self) -> FakeNotifyStats:
        return self._stats

    def configure(self, settings: NotifySettings) -> None:
        self.settings = settings

    def send(self, kind: str, event: dict[str, Any]) -> None:
        self.sent.append((kind, event))
        self._stats.sent += 1


@dataclass
class FakeDaemon:
    """The daemon's services wired to fakes, and the fakes, for a test to drive."""

    services: Services
    kernel: FakeKernel
    clock: FakeClock
    conntrack: FakeConntrack
    systemd: FakeSystemd
    notifier: FakeNotifier
    policy_path: Path
    audit_path: Path
    journal: FakeJournal

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit line written so far (the log writes unbuffered)."""
        lines = self.audit_path.read_text().splitlines() if self.audit_path.exists() else []
        return [json.loads(line) for line in lines]


def fake_daemon(
    workdir: Path,
    policy_text: str,
    *,
    authorizer: Authorizer | None = None,
    journal: FakeJournal | None = None,
    fleet: tuple[FleetSettings, FakeBus] | None = None,
) -> FakeDaemon:
    """Services as the daemon wires them, on fakes; the policy, the SQLite store and the
    audit log live under `workdir`; `fleet` adds the fleet service on a fake bus. Nothing
    is started: call `services.generations.cold_start()` inside a running event loop whose
    task runs
    `services.writer.run()` (or `services.writer.start()`)."""
    from aitherfwd.adapters.audit import AuditLog  # noqa: PLC0415
    from aitherfwd.adapters.files import load_policy  # noqa: PLC0415
    from aitherfwd.adapters.store import Store  # noqa: PLC0415
    from aitherfwd.daemon.services import Ports, wire  # noqa: PLC0415

    clock = FakeClock()
    kernel, conntrack = FakeKernel(clock), FakeConntrack()
    systemd, notifier = FakeSystemd(), FakeNotifier()
    policy_path, audit_path = workdir / "policy.yaml", workdir / "audit.jsonl"
    policy_path.write_text(policy_text)
    ports = Ports(
        kernel=kernel,
        conntrack=conntrack,
        systemd=systemd,
        notifier=notifier,
        clock=clock,
        store=Store(workdir / "state"),
        audit=AuditLog(audit_path, 10 << 20, 2),
        load_policy=load_policy,
        listen_kernel=False,
        journal=(journal := journal or FakeJournal()),
        bus=fleet[1] if fleet else None,
    )
    services = wire(ports, policy_path, authorizer, fleet=fleet[0] if fleet else None)
    return FakeDaemon(
        services, kernel, clock, conntrack, systemd, notifier, policy_path, audit_path, journal
    )
