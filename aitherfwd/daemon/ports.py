"""What the daemon's services need from the outside world, as small Protocols (layer L3).

Owns: the ports — `Kernel` (one libnftables context plus the namespace's nftables
generation), `AuditSink`, `Conntrack`, `Systemd`, `Notifications`, `Bus` (the fleet's) — that the
composition root fills with adapters (daemon/main.py) and unit tests fill with the
shipped fakes (aitherfwd/testing.py). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from aitherfwd.audit_records import AuditRecord
from aitherfwd.fleet.messages import Delivery
from aitherfwd.policy.model import IPAddress, NotifySettings
from aitherfwd.reconcile import Observed

Json = dict[str, Any]


class Kernel(Protocol):
    """The nftables table, as the kernel writer's thread sees it. `run` is one transaction:
    all of it is applied or it raises ApplyError and nothing is."""

    def run(self, commands: list[Json]) -> list[Json]: ...

    def observe(self) -> Observed: ...

    def set_elements(self, set_name: str) -> list[Any]: ...

    def generation(self) -> int | None:
        """The namespace's nftables generation (bumped by every committed transaction,
        ours or anyone's), or None when it cannot be read."""

    def updates_timeouts(self) -> bool:
        """Does an `add` of an element that exists update its timeout? (asked once, after
        the table exists)"""

    def run_quick(self, commands: list[Json]) -> bool:
        """Apply `commands` at once if that is a short, non-blocking write (a small batch
        of element changes by netlink): True when applied (ApplyError when refused), False
        when nothing was done and `run` must be used (from the writer's thread)."""


class AuditSink(Protocol):
    """Where a service's audit records go: the trail itself (adapters/audit.py) or the
    line budget in front of it (daemon/audit_budget.py)."""

    def write(self, now: float, record: AuditRecord) -> None: ...


class Conntrack(Protocol):
    def established_peers(self, ports: Collection[int]) -> set[tuple[IPAddress, int]]: ...

    def delete_source(self, address: IPAddress) -> int: ...


class Systemd(Protocol):
    def ready(self, status: str) -> None: ...

    def reloading(self) -> None: ...

    def status(self, text: str) -> None: ...

    def stopping(self) -> None: ...

    def watchdog(self) -> None: ...


class NotifyCounters(Protocol):
    sent: int
    failed: int
    dropped: int
    retries: int


class Notifications(Protocol):
    """Outbound webhooks (adapters/notify.py): fire and forget, bounded."""

    @property
    def stats(self) -> NotifyCounters: ...

    def configure(self, settings: NotifySettings) -> None: ...

    def send(self, kind: str, event: dict[str, Any]) -> None: ...


class Journal(Protocol):
    """The systemd journal (adapters/journal.py), read in a worker thread, one call at a
    time: `matches` is one conjunction of (field, values) per source."""

    def open(
        self, matches: Sequence[Sequence[tuple[str, Sequence[str]]]], cursor: str | None
    ) -> str | None: ...

    def read(self, limit: int) -> list[dict[str, str]]: ...

    def fileno(self) -> int | None: ...

    def process(self) -> str: ...

    def close(self) -> None: ...


class Bus(Protocol):
    """The fleet's message bus (adapters/natsbus.py: NATS JetStream; FakeBus in
    aitherfwd/testing.py). Every method may raise BusError; none is ever awaited in the
    ban path."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Connect (the client reconnects by itself afterwards), make sure the streams and
        this host's durable consumers exist."""

    async def publish(self, messages: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """Publish (subject, data, message id) in order, pipelined, and wait (bounded) for
        the stream's acknowledgements: which ones it acknowledged. The id lets the stream
        drop a retried duplicate."""

    async def fetch(self, consumer: str, batch: int, timeout: float) -> list[Delivery]:
        """Up to `batch` messages of a durable consumer (`decisions`, `threats`), [] when
        none came within `timeout`."""

    async def put_policy(self, data: bytes) -> int:
        """Store the fleet's policy in its KV bucket; its revision."""

    async def get_policy(self) -> tuple[int, bytes] | None:
        """The fleet's policy (revision, text), None when none was pushed."""

    async def close(self) -> None: ...
