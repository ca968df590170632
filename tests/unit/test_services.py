"""The daemon's control plane through the shipped fakes: reload ordering, revert on refusal,
anti-lockout, drift repair, daemon-side settings, blocks and reputation — no root, no
kernel, milliseconds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aitherfwd import codes
from aitherfwd.control.schema import BlockSpec, EvaluateSpec, ThreatSpec
from aitherfwd.errors import AitherError, ApplyError, PolicyError
from aitherfwd.policy.model import Protocol, Severity
from aitherfwd.testing import FakeDaemon, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: deny, admin_ports: [22]}
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
reputation: {threshold: 5}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
  - {name: web, dest_ports: [443], protocol: tcp, action: allow}
"""
NO_SSH = POLICY.replace("dest_ports: [22]", "dest_ports: [2222]")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = fake_daemon(tmp_path, POLICY)
    yield d
    d.services.ports.store.close()


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]], *, start: bool = True) -> T:
    """Run `body` in a loop where the kernel writer runs (after a cold start)."""

    async def main() -> T:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            if start:
                await fake.services.generations.cold_start()
            return await body()
        finally:
            task.cancel()

    return asyncio.run(main())


async def nothing() -> None:
    return None


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# --- cold start and reload -----------------------------------------------------------------


def test_cold_start_applies_the_policy_and_restores_stored_blocks(fake: FakeDaemon) -> None:
    s = fake.services

    async def block() -> None:
        await s.blocks.block([BlockSpec("203.0.113.7", 600, "test")])

    run(fake, block)
    assert fake.kernel.observe().exists
    assert fake.kernel.values("block_v4") == {"203.0.113.7"}
    fake.kernel.table = None  # the table is gone (a reboot): the store brings the block back
    again = fake_daemon(fake.policy_path.parent, POLICY)
    run(again, nothing)
    assert again.kernel.values("block_v4") == {"203.0.113.7"}


def test_invalid_policy_at_cold_start_leaves_the_kernel_untouched(tmp_path: Path) -> None:
    fake = fake_daemon(tmp_path, "rules: [{name: x, dest_ports: [70000], action: allow}]\n")
    with pytest.raises(PolicyError, match="E-PORT-RANGE"):
        run(fake, nothing)
    assert fake.kernel.batches == []


def test_reload_swaps_the_generation_only_after_the_kernel_accepts(fake: FakeDaemon) -> None:
    s = fake.services

    async def reload_refused() -> None:
        fake.policy_path.write_text(POLICY.replace("[443]", "[8443]"))
        fake.kernel.refuse_next("Could not process rule: Invalid argument")
        fake.kernel.refuse_next("still refusing", after=1)  # the full fallback too
        outcome = await s.generations.reload(force=True)
        assert outcome.result == "rejected"
        assert outcome.generation == 1
        assert outcome.errors[0]["code"] == "E-APPLY"

    run(fake, reload_refused)
    assert s.generations.current().number == 1
    assert s.generations.current().policy.rules[1].name == "web"
    assert fake.systemd.messages[-1].startswith("READY=1")


def test_reload_with_only_daemon_side_changes_makes_a_new_generation(fake: FakeDaemon) -> None:
    s = fake.services

    async def reload() -> None:
        batches = len(fake.kernel.batches)
        fake.policy_path.write_text(POLICY.replace("threshold: 5", "threshold: 50"))
        outcome = await s.generations.reload()
        assert outcome.result == "applied"
        assert outcome.generation == 2
        assert len(fake.kernel.batches) == batches  # nothing for the kernel to do
        assert s.reputation.settings.threshold == 50  # the service sees the new value

    run(fake, reload)
    events = [e["event"] for e in fake.audit_events()]
    assert "reload_applied" in events


def test_reload_of_the_same_file_is_unchanged(fake: FakeDaemon) -> None:
    s = fake.services

    async def reload() -> None:
        assert (await s.generations.reload()).result == "unchanged"

    run(fake, reload)
    assert s.generations.current().number == 1


def test_reload_that_cuts_a_live_admin_session_is_refused_unless_forced(
    fake: FakeDaemon,
) -> None:
    s = fake.services
    fake.conntrack.peers = {(ipaddress.ip_address("198.51.100.4"), 22)}

    async def reload() -> None:
        fake.policy_path.write_text(NO_SSH)
        refused = await s.generations.reload()
        assert refused.result == "rejected"
        assert refused.errors[0]["code"] == "E-LOCKOUT"
        assert "198.51.100.4" in refused.errors[0]["message"]
        assert (await s.generations.reload(force=True)).result == "applied"

    run(fake, reload)
    assert s.generations.current().number == 2


def test_invalid_reload_keeps_the_generation_and_says_why_in_the_status_line(
    fake: FakeDaemon,
) -> None:
    s = fake.services

    async def reload() -> None:
        fake.policy_path.write_text(POLICY.replace("[443]", "[70000]"))
        outcome = await s.generations.reload()
        assert outcome.result == "rejected"

    run(fake, reload)
    assert "REJECTED" in fake.systemd.last_status
    assert "E-PORT-RANGE" in fake.systemd.last_status


# --- drift -----------------------------------------------------------------------------------


def test_a_deleted_table_is_repaired_with_its_blocks(fake: FakeDaemon) -> None:
    s = fake.services

    async def drift() -> None:
        await s.blocks.block([BlockSpec("203.0.113.9", None, "keep me")])
        fake.kernel.table = None
        fake.kernel.touch()
        assert await s.generations.check_drift()

    run(fake, drift)
    assert fake.kernel.observe().exists
    assert fake.kernel.values("block_v4") == {"203.0.113.9"}
    assert s.generations.drift_repairs == 1


def test_a_flushed_block_set_is_refilled(fake: FakeDaemon) -> None:
    s = fake.services

    async def drift() -> None:
        await s.blocks.block([BlockSpec("203.0.113.10", 600, "x")])
        fake.kernel.run(
            [{"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "block_v4"}}}]
        )
        assert fake.kernel.values("block_v4") == set()
        assert await s.generations.check_drift()

    run(fake, drift)
    assert fake.kernel.values("block_v4") == {"203.0.113.10"}


def test_no_drift_check_lists_anything_when_the_generation_is_ours(fake: FakeDaemon) -> None:
    s = fake.services

    async def drift() -> None:
        n = len(fake.kernel.batches)
        assert not await s.generations.check_drift()
        assert len(fake.kernel.batches) == n

    run(fake, drift)


# --- blocks ------------------------------------------------------------------------------------


def test_a_block_the_kernel_refuses_is_reverted_in_table_and_store(fake: FakeDaemon) -> None:
    s = fake.services

    async def refused() -> None:
        fake.kernel.refuse_next("Could not process rule: File exists")
        with pytest.raises(ApplyError):
            await s.blocks.block([BlockSpec("203.0.113.11", 600, "x")])

    run(fake, refused)
    now = fake.clock.now()
    assert s.blocks.table.get("203.0.113.11", now) is None
    assert [b.key for b in s.ports.store.load_blocks(now)] == []


def test_a_bulk_block_written_from_a_thread_is_kept_or_reverted_with_the_kernel(
    fake: FakeDaemon,
) -> None:
    s = fake.services
    held = BlockSpec("198.51.100.1", 600, "before")
    bulk = [BlockSpec(f"10.50.{i // 256}.{i % 256}", 600, "bulk") for i in range(12_000)]

    async def refused_then_taken() -> None:
        await s.blocks.block([held])
        fake.kernel.refuse_next("Could not process rule: No space left on device")
        with pytest.raises(ApplyError):
            await s.blocks.block([*bulk, BlockSpec("198.51.100.1", 900, "again")])
        now = fake.clock.now()
        assert [b.key for b in s.ports.store.load_blocks(now)] == ["198.51.100.1"]
        assert (
            len(s.blocks.table) == 1 and s.blocks.table.get("198.51.100.1", now).reason == "before"
        )
        await s.blocks.block(bulk)

    run(fake, refused_then_taken)
    now = fake.clock.now()
    assert len(s.ports.store.load_blocks(now)) == len(bulk) + 1 == len(s.blocks.table)
    assert len(fake.kernel.values("block_v4")) == len(bulk) + 1


def test_blocks_expire_from_table_and_store_with_one_audit_line_each(fake: FakeDaemon) -> None:
    s = fake.services

    async def expire() -> None:
        await s.blocks.block([BlockSpec("203.0.113.12", 60, "x")])
        fake.clock.advance(61)
        assert s.blocks.expire() == 1

    run(fake, expire)
    assert len(s.blocks.table) == 0
    assert [e["event"] for e in fake.audit_events()].count("block_expired") == 1


def test_unblocking_what_is_not_blocked_is_a_404(fake: FakeDaemon) -> None:
    s = fake.services

    async def unblock() -> None:
        with pytest.raises(AitherError) as err:
            await s.blocks.unblock(net("203.0.113.13/32"))
        assert codes.http_status(err.value.code) == 404

    run(fake, unblock)


def test_the_management_zone_is_never_blocked(fake: FakeDaemon) -> None:
    s = fake.services

    async def protected() -> None:
        with pytest.raises(AitherError) as err:
            await s.blocks.block([BlockSpec("10.77.9.5", 600, "x")])
        assert codes.http_status(err.value.code) == 409

    run(fake, protected)


# --- reputation --------------------------------------------------------------------------------


def test_threat_events_escalate_to_a_block_through_the_blocks_service(fake: FakeDaemon) -> None:
    s = fake.services
    source = ipaddress.ip_address("198.51.100.20")

    async def threats() -> None:
        events = [ThreatSpec("BRUTE_FORCE", source, Severity.HIGH, "x")] * 3
        outcome = await s.reputation.threats(events)
        assert [b.key for b in outcome.blocked] == ["198.51.100.20"]

    run(fake, threats)
    assert fake.kernel.values("block_v4") == {"198.51.100.20"}
    assert s.reputation.status().threat_events == {"BRUTE_FORCE": 3}


def test_evaluate_sees_blocks(fake: FakeDaemon) -> None:
    s = fake.services
    address = ipaddress.ip_address("203.0.113.14")
    spec = EvaluateSpec(address, Protocol.TCP, 443, "inbound", None, None, None)

    async def evaluate() -> None:
        assert s.queries.evaluate(spec).verdict.verdict == "allow"
        await s.blocks.block([BlockSpec("203.0.113.14", 600, "x")])
        assert s.queries.evaluate(spec).verdict.verdict == "deny"

    run(fake, evaluate)


# --- the API: every route, every role ---------------------------------------------------------

ROLE_UIDS = {"read": 1001, "sandbox": 1002, "report": 1003, "admin": 1004, "none": 1005}


def _api(fake: FakeDaemon) -> Any:
    from aitherfwd.daemon.api import Api  # noqa: PLC0415
    from aitherfwd.roles import Authorizer, RoleMembers  # noqa: PLC0415

    roles = {
        r: RoleMembers(uids=frozenset({uid}), gids=frozenset())
        for r, uid in ROLE_UIDS.items()
        if r != "none"
    }
    return Api(fake.services, Authorizer(roles))


def _request(method: str, path: str, uid: int) -> Any:
    from aitherfwd.adapters.control_server import HttpRequest, Peer  # noqa: PLC0415

    return HttpRequest(method, path, {}, {}, b"{}", Peer(4242, uid, uid, ()))


def test_every_route_answers_403_to_every_role_below_its_own(fake: FakeDaemon) -> None:
    from aitherfwd.daemon.api import ROUTES  # noqa: PLC0415

    allowed = {
        "read": {"read"},
        "sandbox": {"sandbox"},
        "report": {"report"},
        "admin": {"admin"},
    }

    async def probe() -> list[tuple[str, str, str, int]]:
        api = _api(fake)
        seen = []
        for route in ROUTES:
            path = route.path + ("203.0.113.1" if route.path.endswith("/") else "")
            for role, uid in ROLE_UIDS.items():
                response = await api(_request(route.method, path, uid))
                seen.append((route.method, route.path, role, response.status))
        return seen

    for method, path, role, status in run(fake, probe):
        permitted = role == "admin" or role in allowed[_route_role(method, path)]
        assert (status != 403) == permitted, (method, path, role, status)


def _route_role(method: str, path: str) -> str:
    from aitherfwd.daemon.api import ROUTES  # noqa: PLC0415

    return next(r.role for r in ROUTES if (r.method, r.path) == (method, path))


def test_a_flooding_uid_is_refused_on_the_head_but_the_admin_never_is(fake: FakeDaemon) -> None:
    from aitherfwd.adapters.control_server import Peer  # noqa: PLC0415
    from aitherfwd.control.limits import ControlLimits  # noqa: PLC0415
    from aitherfwd.daemon.api import Api  # noqa: PLC0415

    api = _api(fake)
    api = Api(fake.services, api.authorizer, limits=ControlLimits(requests_per_uid=5))
    reader = Peer(1, ROLE_UIDS["read"], ROLE_UIDS["read"], ())
    root = Peer(1, 0, 0, ())
    for _ in range(10):
        api.head(reader, "GET", "/v1/health")
    with pytest.raises(AitherError) as refused:
        api.head(reader, "GET", "/v1/health")
    assert refused.value.code == "E-RATE-LIMITED"
    for _ in range(100):
        api.head(root, "GET", "/v1/health")


def test_a_reporter_is_budgeted_by_its_threat_events_and_the_admin_is_not(
    fake: FakeDaemon,
) -> None:
    import json  # noqa: PLC0415

    from aitherfwd.adapters.control_server import HttpRequest, Peer  # noqa: PLC0415
    from aitherfwd.control.limits import ControlLimits  # noqa: PLC0415
    from aitherfwd.daemon.api import Api  # noqa: PLC0415

    base = _api(fake)
    api = Api(fake.services, base.authorizer, limits=ControlLimits(threat_events_per_uid=50))
    events = [
        {"type": "SOAK", "source_ip": f"203.0.113.{i % 200 + 1}", "severity": "low"}
        for i in range(150)
    ]
    body = json.dumps({"events": events}).encode()

    def post(uid: int) -> Any:
        return HttpRequest("POST", "/v1/threats", {}, {}, body, Peer(4242, uid, uid, ()))

    async def flood() -> list[int]:
        answers = [await api(post(ROLE_UIDS["report"])) for _ in range(2)]
        answers += [await api(post(0)) for _ in range(3)]
        return [a.status for a in answers]

    # 150 events leave the reporter 50 in debt (burst 100): its next batch is refused
    # before any event reaches the ladder; root is never budgeted
    assert run(fake, flood) == [200, 429, 200, 200, 200]
    assert sum(fake.services.reputation.threat_counts.values()) == 150 * 4


def test_no_other_handler_starts_while_an_admin_request_is_in_flight(fake: FakeDaemon) -> None:
    import threading  # noqa: PLC0415

    from aitherfwd.adapters.control_server import HttpRequest, Peer  # noqa: PLC0415

    api = _api(fake)
    held = threading.Event()
    original = fake.kernel.run

    def slow_run(commands: Any) -> Any:
        held.wait(5)  # the admin's ban sits in the kernel writer
        return original(commands)

    def request(method: str, path: str, body: bytes, uid: int) -> Any:
        return HttpRequest(method, path, {}, {}, body, Peer(4242, uid, uid, ()))

    async def race() -> list[str]:
        done: list[str] = []
        fake.kernel.run = slow_run  # type: ignore[method-assign]
        fake.kernel.run_quick = lambda commands: False  # type: ignore[method-assign]
        ban = request("POST", "/v1/blocks", b'{"address": "203.0.113.5"}', 0)
        admin = asyncio.ensure_future(api(ban))
        admin.add_done_callback(lambda _: done.append("admin"))
        await asyncio.sleep(0.05)
        reader = asyncio.ensure_future(api(request("GET", "/v1/status", b"", ROLE_UIDS["read"])))
        reader.add_done_callback(lambda _: done.append("read"))
        await asyncio.sleep(0.05)
        assert not reader.done()  # waits for the admin, though it needs no kernel
        held.set()
        await asyncio.gather(admin, reader)
        assert admin.result().status == reader.result().status == 200
        return done

    assert run(fake, race) == ["admin", "read"]
