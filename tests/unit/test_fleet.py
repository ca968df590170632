"""The fleet through the shipped fakes: three hosts' real services on one in-memory
JetStream — shared blocks and unblocks, local rules winning, no echoes, partitions,
restarts and late joiners. No root, no NATS, milliseconds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aitherfwd.control.schema import BlockSpec, ThreatSpec
from aitherfwd.daemon.fleet import FleetService
from aitherfwd.fleet import messages as m
from aitherfwd.fleet.settings import FleetSettings
from aitherfwd.policy.model import Severity
from aitherfwd.testing import FakeBus, FakeDaemon, FakeJetStream, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
reputation: {threshold: 5, never_block: [198.51.100.0/24]}
rules:
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
# host A has no management zone: it may block what B protects
POLICY_A = POLICY.replace("cidrs: [10.77.9.0/24]", "cidrs: [10.77.8.0/24]").replace(
    "never_block: [198.51.100.0/24]", "never_block: []"
)
SCANNER = "203.0.113.7"


class Fleet:
    """Hosts a, b, c (fake daemons) on one fake JetStream, in one event loop."""

    def __init__(self, tmp: Path, share: frozenset[str] = frozenset({"blocks"})) -> None:
        self.tmp, self.share = tmp, share
        self.js = FakeJetStream()
        self.hosts: dict[str, FakeDaemon] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, name: str, policy: str = POLICY, wall: float | None = None) -> FakeDaemon:
        workdir = self.tmp / name
        workdir.mkdir(exist_ok=True)
        settings = FleetSettings(("nats://127.0.0.1:4222",), "lab", name, self.share)
        d = fake_daemon(workdir, policy, fleet=(settings, FakeBus(self.js, name)))
        if wall is not None:
            d.clock.wall = wall
        self.tasks.append(asyncio.get_running_loop().create_task(d.services.writer.run()))
        await d.services.generations.cold_start()
        await self.fleet(d).bus.connect()
        self.hosts[name] = d
        return d

    @staticmethod
    def fleet(d: FakeDaemon) -> FleetService:
        assert d.services.fleet is not None
        return d.services.fleet

    async def pump(self) -> None:
        """Publish every outbox, then let every host fetch and apply, until quiet."""
        for _ in range(10):
            moved = 0
            for d in self.hosts.values():
                f = self.fleet(d)
                while f.outbox.count and f.bus.connected and await f.publish_some():
                    moved += 1
            for d in self.hosts.values():
                f = self.fleet(d)
                if not f.bus.connected:
                    continue
                for consumer in ("decisions", "threats"):
                    got = await f.bus.fetch(consumer, 1000, 0)
                    if got:
                        moved += 1
                        await f.apply(got, consumer)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        for d in self.hosts.values():
            d.clock.advance(seconds)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for d in self.hosts.values():
            d.services.ports.store.close()


def fleet_run(tmp: Path, body: Callable[[Fleet], Awaitable[T]], **kw: object) -> T:
    async def main() -> T:
        f = Fleet(tmp, **kw)  # type: ignore[arg-type]
        try:
            return await body(f)
        finally:
            f.close()

    return asyncio.run(main())


def blocked(d: FakeDaemon) -> set[str]:
    return d.kernel.values("block_v4") | d.kernel.values("block_v4_net")


async def reputation_block(d: FakeDaemon, key: str, ttl: int | None = 900) -> None:
    await d.services.blocks.block([BlockSpec(key, ttl, "port scan")], source="reputation")


# --- shared blocks -------------------------------------------------------------------------


def test_an_automatic_block_on_one_host_lands_on_the_others_with_the_same_expiry(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b, c = await f.add("a", POLICY_A), await f.add("b"), await f.add("c")
        await reputation_block(a, SCANNER, 900)
        await f.pump()
        for host in (b, c):
            assert blocked(host) == {SCANNER}
            blk = host.services.blocks.table.get(SCANNER, host.clock.now())
            assert blk is not None and blk.source == "fleet"
            assert blk.reason == "fleet a: port scan"  # explain and blocks show the origin
            own = a.services.blocks.table.get(SCANNER, a.clock.now())
            assert own is not None and own.expires_at is not None
            assert blk.expires_at is not None and 0 <= blk.expires_at - own.expires_at < 1.0
        assert Fleet.fleet(b).status().applied == 1
        # nothing came back to a: no echo, and b and c published nothing
        assert f.js.published == 1
        assert Fleet.fleet(a).status().skipped == {"own": 1}

    fleet_run(tmp_path, body)


def test_a_manual_block_stays_local_unless_shared_with_the_fleet(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        await a.services.blocks.block([BlockSpec("203.0.113.8", 600, "manual")])
        await f.pump()
        assert blocked(b) == set()
        made = await a.services.blocks.block([BlockSpec("203.0.113.9", None, "by hand")])
        Fleet.fleet(a).share_blocks(made, a.clock.now())  # `aitherfwd block --fleet`
        await f.pump()
        assert blocked(b) == {"203.0.113.9"}
        blk = b.services.blocks.table.get("203.0.113.9", b.clock.now())
        assert blk is not None and blk.expires_at is None  # permanent stays permanent

    fleet_run(tmp_path, body)


def test_a_fleet_block_never_lands_on_management_never_block_or_loopback(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        made = await a.services.blocks.block(
            [
                BlockSpec("10.77.9.5", 600, "x"),  # b's management zone
                BlockSpec("198.51.100.7", 600, "x"),  # b's never_block
                BlockSpec(SCANNER, 600, "x"),
            ]
        )
        Fleet.fleet(a).share_blocks(made, a.clock.now())
        # a hand-made message for loopback (a's table would refuse to block it)
        loop = m.Decision("a.00000000aa", m.BLOCK, "127.0.0.1", "a", a.clock.now(), None, "x")
        await Fleet.fleet(b).apply([m.Delivery(m.encode(loop), 0, _noack)])
        await f.pump()
        assert blocked(b) == {SCANNER}
        skipped = [e for e in b.audit_events() if e["event"] == "fleet_skipped"]
        assert sorted(e["source_ip"] for e in skipped) == ["10.77.9.5", "127.0.0.1", "198.51.100.7"]
        assert all(e["why"] == "protected" and e["origin"] == "a" for e in skipped)

    fleet_run(tmp_path, body)


async def _noack() -> None:
    return None


def test_a_fleet_block_never_cuts_a_live_admin_session(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        b.conntrack.peers.add((ipaddress.ip_address("192.0.2.44"), 22))
        await reputation_block(a, "192.0.2.44")
        await f.pump()
        assert blocked(b) == set()
        (line,) = [e for e in b.audit_events() if e["event"] == "fleet_skipped"]
        assert "live admin session" in line["detail"]

    fleet_run(tmp_path, body)


def test_local_blocks_win_over_fleet_blocks_and_unblocks(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        await b.services.blocks.block([BlockSpec(SCANNER, None, "b's own, permanent")])
        await reputation_block(a, SCANNER, 60)
        await f.pump()
        held = b.services.blocks.table.get(SCANNER, b.clock.now())
        assert held is not None and held.source == "manual" and held.expires_at is None
        await a.services.blocks.unblock(ipaddress.ip_network(SCANNER))
        await f.pump()
        assert blocked(b) == {SCANNER}  # a's unblock does not lift b's own block
        assert Fleet.fleet(b).status().skipped == {"local": 2}

    fleet_run(tmp_path, body)


def test_unblocks_propagate_but_a_hosts_own_unblock_of_a_fleet_block_stays_local(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b, c = await f.add("a", POLICY_A), await f.add("b"), await f.add("c")
        await reputation_block(a, SCANNER)
        await reputation_block(a, "203.0.113.50")
        await f.pump()
        assert blocked(b) == blocked(c) == {SCANNER, "203.0.113.50"}
        await b.services.blocks.unblock(ipaddress.ip_network(SCANNER))  # b's own: local
        await f.pump()
        assert blocked(b) == {"203.0.113.50"} and SCANNER in blocked(c)
        await a.services.blocks.unblock(ipaddress.ip_network("203.0.113.50"))
        await f.pump()
        assert blocked(b) == set() and blocked(c) == {SCANNER}
        unblocked = [e for e in c.audit_events() if e["event"] == "unblocked"]
        assert [(e["source_ip"], e["source"]) for e in unblocked] == [("203.0.113.50", "fleet")]

    fleet_run(tmp_path, body)


def test_a_fleet_unblock_from_any_host_lifts_fleet_blocks_everywhere(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b, c = await f.add("a", POLICY_A), await f.add("b"), await f.add("c")
        await reputation_block(a, SCANNER)
        await f.pump()
        # b's admin: `aitherfwd unblock --fleet` (b's block is a fleet one: lifted here too)
        await b.services.blocks.unblock(ipaddress.ip_network(SCANNER))
        Fleet.fleet(b).share_unblock(SCANNER, b.clock.now())
        await f.pump()
        assert blocked(c) == set()
        assert blocked(a) == {SCANNER}  # a's own block is a's word

    fleet_run(tmp_path, body)


def test_redeliveries_are_applied_once(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        await reputation_block(a, SCANNER)
        await Fleet.fleet(a).publish_some()
        got = await Fleet.fleet(b).bus.fetch("decisions", 10, 0)
        await Fleet.fleet(b).apply(got)
        await Fleet.fleet(b).apply(got)  # the same deliveries again (an ack was lost)
        assert Fleet.fleet(b).status().applied == 1
        assert Fleet.fleet(b).status().skipped == {"duplicate": 1}

    fleet_run(tmp_path, body)


# --- partitions, restarts, late joiners ----------------------------------------------------


def test_blocks_made_during_a_partition_are_published_and_caught_up_after_it(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        f.js.up = False  # the bus is gone: a keeps blocking alone
        await reputation_block(a, SCANNER, 600)
        await reputation_block(a, "203.0.113.60", 5)  # expires during the partition
        assert blocked(a) == {SCANNER, "203.0.113.60"}
        assert Fleet.fleet(a).status().backlog == 2
        await f.pump()
        assert blocked(b) == set()
        f.advance(30)
        f.js.up = True
        await f.pump()
        assert blocked(b) == {SCANNER}
        assert Fleet.fleet(b).status().skipped.get("expired") == 1
        assert Fleet.fleet(a).status().backlog == 0

    fleet_run(tmp_path, body)


def test_the_backlog_survives_a_restart_of_the_daemon(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a = await f.add("a", POLICY_A)
        f.js.up = False
        await reputation_block(a, SCANNER, 600)
        a.services.ports.store.close()
        del f.hosts["a"]
        f.js.up = True
        again = await f.add("a", POLICY_A)  # same state directory: the outbox is there
        assert Fleet.fleet(again).status().backlog == 1
        b = await f.add("b")
        await f.pump()
        assert blocked(b) == {SCANNER}

    fleet_run(tmp_path, body)


def test_a_late_joiner_gets_the_live_blocks_only(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a = await f.add("a", POLICY_A)
        await reputation_block(a, SCANNER, 600)
        await reputation_block(a, "203.0.113.70", 600)
        await reputation_block(a, "203.0.113.71", 5)
        await a.services.blocks.unblock(ipaddress.ip_network("203.0.113.70"))
        await f.pump()
        f.advance(10)
        c = await f.add("c", wall=a.clock.now())
        await f.pump()
        assert blocked(c) == {SCANNER}

    fleet_run(tmp_path, body)


def test_the_outbox_is_bounded_in_decisions_dropping_the_oldest_messages(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        a = await f.add("a", POLICY_A)
        fa = Fleet.fleet(a)
        fa.outbox.bound = 100
        f.js.up = False
        for start in (1, 51, 101):  # three batches of 50: the oldest goes
            specs = [BlockSpec(f"203.0.113.{i}", 600, "x") for i in range(start, start + 50)]
            await a.services.blocks.block(specs, source="reputation")
        assert fa.status().backlog == 100 and fa.status().backlog_dropped == 50
        f.js.up = True
        await f.pump()
        assert fa.status().backlog == 0 and fa.status().published == 100
        assert f.js.published == 2  # messages: a batch each
        b = await f.add("b", POLICY_A)
        await f.pump()
        assert Fleet.fleet(b).status().applied == 100
        assert b.services.blocks.table.get("203.0.113.1", b.clock.now()) is None
        assert b.services.blocks.table.get("203.0.113.51", b.clock.now()) is not None

    fleet_run(tmp_path, body)


# --- shared threat events ------------------------------------------------------------------


def test_three_low_threat_events_on_three_hosts_add_up_on_each_ladder(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        hosts = [await f.add(n) for n in ("a", "b", "c")]
        await f.pump()  # the threat consumers exist before the events
        ev = [ThreatSpec("SENTRY_PORT_SCAN", ipaddress.ip_address(SCANNER), Severity.LOW, "")]
        for d in hosts:
            for _ in range(2):  # 2 x 3 = 6 low events: over the threshold of 5 everywhere
                await d.services.reputation.threats(ev)
        await f.pump()
        for d in hosts:
            held = d.services.blocks.table.get(SCANNER, d.clock.now())
            assert held is not None, d.services.reputation.status()

    fleet_run(tmp_path, body, share=frozenset({"blocks", "threats"}))


def test_the_bus_state_and_counters_are_in_the_metrics(tmp_path: Path) -> None:
    from aitherfwd.adapters import metrics  # noqa: PLC0415
    from aitherfwd.daemon.telemetry import Telemetry  # noqa: PLC0415

    async def body(f: Fleet) -> bytes:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        await reputation_block(a, SCANNER)
        await f.pump()
        reg, collector = metrics.registry()
        return metrics.render(reg, collector, Telemetry(b.services).snapshot())

    text = fleet_run(tmp_path, body).decode()
    for line in (
        "aitherfwd_fleet_connected 1.0",
        "aitherfwd_fleet_applied_total 1.0",
        "aitherfwd_fleet_backlog 0.0",
        "aitherfwd_fleet_consumer_lag 0.0",
    ):
        assert line in text, text


# --- the fleet's policy --------------------------------------------------------------------

NEW_POLICY = POLICY.replace("dest_ports: [443]", "dest_ports: [443, 8443]")


def test_a_pushed_policy_is_applied_by_followers_and_an_invalid_one_by_none(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        a, b = await f.add("a", POLICY_A), await f.add("b")
        pa, pb = Fleet.fleet(a).policy, Fleet.fleet(b).policy
        assert pa is not None and pb is not None
        bad = await pa.push(POLICY.replace("dest_ports: [443]", "dest_ports: [70000]"))
        assert bad["result"] == "rejected" and bad["errors"][0]["code"] == "E-PORT-RANGE"
        assert f.js.policy is None  # nothing was published
        ok = await pa.push(NEW_POLICY)
        assert ok["result"] == "published"
        rev, data = await Fleet.fleet(b).bus.get_policy() or (0, b"")
        assert await pb.apply(rev, data) == "applied"
        assert b.services.generations.current().number == 2
        assert len(b.services.generations.current().policy.rules) == 1
        assert "8443" in b.services.generations.policy_path.read_text()
        assert pb.status()["revision"] == rev
        # a revision that reaches the bucket invalid (pushed around the daemon) is refused
        # by the follower, which keeps its running policy and says why
        broken = NEW_POLICY.replace("action: allow", "action: maybe").encode()
        assert await pb.apply(rev + 1, broken) == "rejected"
        assert b.services.generations.current().number == 2
        assert pb.status()["revision"] == rev and pb.status()["last_seen"] == rev + 1
        assert pb.status()["errors"][0]["code"] == "E-ENUM"

    fleet_run(tmp_path, body, share=frozenset({"blocks", "policy"}))


def test_a_fleet_policy_that_would_cut_a_live_admin_session_is_refused(tmp_path: Path) -> None:
    async def body(f: Fleet) -> None:
        b = await f.add("b", POLICY.replace("dest_ports: [443]", "dest_ports: [22, 443]"))
        b.conntrack.peers.add((ipaddress.ip_address("192.0.2.50"), 22))
        pb = Fleet.fleet(b).policy
        assert pb is not None
        assert await pb.apply(7, POLICY.encode()) == "rejected"  # no port 22 any more
        assert pb.status()["errors"][0]["code"] == "E-LOCKOUT"
        assert b.services.generations.current().number == 1

    fleet_run(tmp_path, body, share=frozenset({"blocks", "policy"}))


def test_a_decision_published_under_another_hosts_name_is_dropped_as_forged(
    tmp_path: Path,
) -> None:
    async def body(f: Fleet) -> None:
        b, c = await f.add("b"), await f.add("c")
        forged = m.Decision("a.00000000ff", m.BLOCK, SCANNER, "a", c.clock.now(), None, "x")
        # c may publish only under afw.lab.d.c.… (NATS permissions): it claims to be a
        f.js.publish(m.decision_subject("lab", "c", SCANNER), m.encode(forged), forged.id)
        await f.pump()
        assert blocked(b) == set() and Fleet.fleet(b).status().invalid == 1

    fleet_run(tmp_path, body)
