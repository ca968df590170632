"""Property: whatever sequence of blocks, unblocks, expiries, refused writes, reloads and
drift the control plane goes through, the store, the block table and the (fake) kernel
hold the same live blocks. Driven by hypothesis through the real services on the shipped
fakes; no privilege."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aitherfwd.control.schema import BlockSpec
from aitherfwd.dynamic.blocks import address_text
from aitherfwd.errors import AitherError
from aitherfwd.testing import FakeDaemon, fake_daemon

POLICY = """\
version: 1
zones:
  - {name: management, cidrs: [10.77.9.0/24]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: web, dest_ports: [%d], protocol: tcp, action: allow}
"""
ADDRESSES = [f"198.51.100.{i}" for i in range(1, 7)] + [f"2001:db8::{i}" for i in range(1, 5)]
PREFIXES = ["203.0.113.0/28", "203.0.113.16/28", "2001:db8:1::/64"]
TARGETS = ADDRESSES + PREFIXES + ["10.77.9.3"]  # the last one is protected

op = st.one_of(
    st.tuples(st.just("block"), st.sampled_from(TARGETS), st.sampled_from([None, 30, 600])),
    st.tuples(st.just("unblock"), st.sampled_from(TARGETS), st.none()),
    st.tuples(st.just("advance"), st.none(), st.sampled_from([5, 31, 700])),
    st.tuples(st.just("refuse"), st.sampled_from(TARGETS), st.sampled_from([60])),
    st.tuples(st.just("reload"), st.none(), st.sampled_from([443, 8443])),
    st.tuples(st.just("drift"), st.none(), st.sampled_from(["table", "flush", "none"])),
)


def kernel_blocks(fake: FakeDaemon) -> set[str]:
    return {
        address_text(ipaddress.ip_network(v))
        for s in ("block_v4", "block_v6", "block_v4_net", "block_v6_net")
        for v in fake.kernel.values(s)
    }


async def apply(fake: FakeDaemon, kind: str, target: str | None, arg: object) -> None:
    s = fake.services
    if kind in ("block", "refuse"):
        assert target is not None
        if kind == "refuse":
            fake.kernel.refuse_next("Could not process rule: No buffer space available")
        with contextlib.suppress(AitherError):
            await s.blocks.block([BlockSpec(target, arg if isinstance(arg, int) else None, "p")])
        fake.kernel.refusals.clear()  # a protected target never reached the kernel
    elif kind == "unblock":
        with contextlib.suppress(AitherError):
            await s.blocks.unblock(ipaddress.ip_network(target or ""))
    elif kind == "advance":
        fake.clock.advance(float(arg))  # type: ignore[arg-type]
        s.blocks.expire()
    elif kind == "reload":
        fake.policy_path.write_text(POLICY % arg)
        await s.generations.reload()
    elif arg == "table":
        fake.kernel.table = None
        fake.kernel.touch()
        await s.generations.check_drift()
    elif arg == "flush":
        fake.kernel.run(
            [{"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "block_v4"}}}]
        )
        fake.clock.advance(4)  # element repair waits at least 3 s between listings
        await s.generations.check_drift()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(op, max_size=25))
def test_store_table_and_kernel_always_agree(ops: list[tuple[str, str | None, object]]) -> None:
    with tempfile.TemporaryDirectory(prefix="afw-prop-") as tmp:
        fake = fake_daemon(Path(tmp), POLICY % 443)

        async def main() -> None:
            writer = asyncio.get_running_loop().create_task(fake.services.writer.run())
            try:
                await fake.services.generations.cold_start()
                for kind, target, arg in ops:
                    await apply(fake, kind, target, arg)
                    fake.services.blocks.expire()
                    now = fake.clock.now()
                    table = {b.key for b in fake.services.blocks.table.active(now)}
                    stored = {b.key for b in fake.services.ports.store.load_blocks(now)}
                    assert table == stored, (kind, target, arg)
                    assert table == kernel_blocks(fake), (kind, target, arg)
                    assert "10.77.9.3" not in table
            finally:
                writer.cancel()
                fake.services.ports.store.close()

        asyncio.run(main())
