"""Sandbox grants are bounded (issue 14, items 11, 12, 14): a non-admin caller cannot open a
huge prefix, cloud metadata is refused in every form, live grants are capped and each costs
what the first did, and overlaps the kernel would refuse are found by the API (409, the
pair named) — for grants and inside one bulk block request."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from aitherfwd.codes import http_status
from aitherfwd.config import parse_config
from aitherfwd.control.sandbox import GrantSpec
from aitherfwd.control.schema import BlockSpec
from aitherfwd.daemon.egress import Caller
from aitherfwd.errors import AitherError
from aitherfwd.roles import Authorizer
from aitherfwd.testing import FakeDaemon, fake_daemon

T = TypeVar("T")
POLICY = """\
version: 1
settings: {default_policy: allow}
egress: {default_action: reject, resolvers: [10.77.0.53]}
sandbox: {max_ttl: 1h, default_ttl: 10m, max_grants: 30000, max_grants_per_scope: 25000}
"""
ROOT, AGENT = Caller(0, 0), Caller(1001, 1001)
ACTOR = {"uid": 1001, "gid": 1001, "pid": 1}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    cfg = parse_config("[roles]\nsandbox = {users = [1001]}\n", int, int)
    d = fake_daemon(tmp_path, POLICY, authorizer=Authorizer(cfg.roles))
    yield d
    d.services.ports.store.close()


def run(fake: FakeDaemon, body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        task = asyncio.get_running_loop().create_task(fake.services.writer.run())
        try:
            await fake.services.generations.cold_start()
            return await body()
        finally:
            task.cancel()

    return asyncio.run(main())


def spec(dest: str, ports: tuple[int, ...] = (), scope: str = "agent") -> GrantSpec:
    return GrantSpec(ipaddress.ip_network(dest), None, 600, scope, ports)


async def refused(fake: FakeDaemon, s: GrantSpec, caller: Caller = AGENT) -> AitherError:
    with pytest.raises(AitherError) as info:
        await fake.services.egress.grant(s, caller, ACTOR)
    return info.value


def test_a_non_admin_grant_wider_than_the_policy_allows_is_refused(fake: FakeDaemon) -> None:
    async def body() -> None:
        err = await refused(fake, spec("2000::/3"))
        assert err.code == "E-GRANT-TOO-WIDE" and http_status(err.code) == 403
        assert "sandbox.min_prefix_v6 (48)" in err.message
        err = await refused(fake, spec("198.18.0.0/16"))
        assert "sandbox.min_prefix_v4 (24)" in err.message
        await fake.services.egress.grant(spec("198.18.0.0/24"), AGENT, ACTOR)
        await fake.services.egress.grant(spec("2001:db8::/48"), AGENT, ACTOR)
        await fake.services.egress.grant(spec("198.19.0.0/16"), ROOT, ACTOR)  # admin may

    run(fake, body)


@pytest.mark.parametrize(
    "dest",
    [
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "169.254.170.2",
        "192.0.0.192",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
        "2002:a9fe:a9fe::/48",  # 6to4
        "64:ff9b::/96",  # all of NAT64, metadata included
    ],
)
def test_cloud_metadata_is_refused_in_every_form(fake: FakeDaemon, dest: str) -> None:
    async def body() -> None:
        err = await refused(fake, spec(dest), ROOT)
        assert err.code == "E-GRANT-REFUSED", err.message
        assert "cloud metadata" in err.message

    run(fake, body)


def test_an_address_grant_inside_a_prefix_grant_on_the_same_port_is_a_409(
    fake: FakeDaemon,
) -> None:
    async def body() -> None:
        e = fake.services.egress
        await e.grant(spec("198.18.4.0/24", (443,)), AGENT, ACTOR)
        err = await refused(fake, spec("198.18.4.7", (443, 80)))
        assert err.code == "E-GRANT-OVERLAP" and http_status(err.code) == 409
        assert "198.18.4.7" in err.message and "198.18.4.0/24" in err.message
        await e.grant(spec("198.18.4.7", (80,)), AGENT, ACTOR)  # another port: fine
        await e.grant(spec("198.18.5.9", (8443,)), AGENT, ACTOR)
        err = await refused(fake, spec("198.18.5.0/24", (8443,)))  # the other way round
        assert "198.18.5.9" in err.message

    run(fake, body)


def test_overlapping_prefixes_in_one_bulk_block_request_are_a_409_naming_the_pair(
    fake: FakeDaemon,
) -> None:
    async def body() -> None:
        specs = [BlockSpec(k, 60, "bulk") for k in ("192.0.2.0/24", "10.0.0.0/8", "10.1.0.0/16")]
        with pytest.raises(AitherError) as info:
            await fake.services.blocks.block(specs)
        assert info.value.code == "E-BLOCK-OVERLAP" and http_status(info.value.code) == 409
        assert "10.1.0.0/16 overlaps 10.0.0.0/8" in info.value.message

    run(fake, body)
    assert fake.kernel.values("block_v4_net") == set()


def test_live_grants_are_capped_per_scope_and_in_total(fake: FakeDaemon) -> None:
    async def body() -> None:
        e = fake.services.egress
        policy = e.policy
        assert policy is not None
        from dataclasses import replace  # noqa: PLC0415

        e.policy = replace(policy, sandbox=replace(policy.sandbox, max_grants_per_scope=2))
        await e.grant(spec("198.18.0.1"), AGENT, ACTOR)
        await e.grant(spec("198.18.0.2"), AGENT, ACTOR)
        await e.grant(spec("198.18.0.2"), AGENT, ACTOR)  # a renewal is not a new grant
        err = await refused(fake, spec("198.18.0.3"))
        assert err.code == "E-GRANT-LIMIT" and "max_grants_per_scope (2)" in err.message
        await e.grant(spec("198.18.0.3", scope="other"), AGENT, ACTOR)

    run(fake, body)


def test_the_20000th_grant_costs_what_the_first_did_and_evaluate_stays_fast(
    fake: FakeDaemon,
) -> None:
    base = int(ipaddress.IPv4Address("198.18.0.0"))

    async def body() -> None:
        e = fake.services.egress
        took = []
        for i in range(20_000):
            dest = (
                f"{ipaddress.IPv4Address(base + i * 256)}/24"
                if i % 2
                else str(ipaddress.IPv4Address(base + 1 + i * 256))
            )
            started = time.perf_counter()
            await e.grant(spec(dest, scope=f"s{i % 10}"), AGENT, ACTOR)
            took.append(time.perf_counter() - started)
        first, last = sorted(took[:500])[250], sorted(took[-500:])[250]
        assert last < 3 * first + 0.0005, (first, last)
        now = fake.clock.now()
        started = time.perf_counter()
        for i in range(2_000):
            addr = ipaddress.IPv4Address(base + 5 + (i * 2 + 1) * 256)
            assert e.grants.lookup(addr, 443, (), now) is not None
        assert (time.perf_counter() - started) / 2_000 < 0.0002

    run(fake, body)
    assert fake.services.egress.grants.counts(fake.clock.now())["grants_v4"] == 20_000


def test_sandbox_limits_in_the_policy_are_validated_with_located_errors(tmp_path: Path) -> None:
    from aitherfwd.adapters.files import load_policy  # noqa: PLC0415

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("max_grants: 30000", "max_grants: 0, min_prefix_v6: 129"))
    result = load_policy(path)
    assert result.policy is None
    found = {(d.code, d.path) for d in result.diagnostics}
    assert ("E-RANGE", "sandbox.max_grants") in found
    assert ("E-RANGE", "sandbox.min_prefix_v6") in found
    assert all(d.pos is not None for d in result.diagnostics)


def test_a_grant_the_listing_pruned_is_still_recorded_as_expired(fake: FakeDaemon) -> None:
    """The grant listing is the first to meet a lapsed grant: the egress runtime's expiry
    still ends it in the store and writes its `sandbox_expired` line."""
    egress = fake.services.egress

    async def body() -> None:
        await egress.grant(spec("198.18.0.7"), AGENT, ACTOR)
        fake.clock.advance(601)
        assert egress.grants.active(fake.clock.now()) == []  # pruned by the listing...
        egress._expire_grants()  # ...and recorded by the runtime's next turn

    run(fake, body)
    events = [e["event"] for e in fake.audit_events()]
    assert events.count("sandbox_expired") == 1
    assert fake.services.ports.store.load_grants(fake.clock.now()) == []
