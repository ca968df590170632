"""The blocks service (layer L3): block, unblock, expiry, revert, conntrack cuts.

Owns: the live `BlockTable` and the order of every block change — check → store → kernel
(through the one writer) → bookkeeping → audit; a refused write is reverted in the table
and the store. A bulk request's columns (control/bulkblocks.py) take a path of their own
up to the kernel write. The block sets' part of a cold start and of drift repair is
`blocks_kernel.BlockKernelView`, its base. Knows nothing of HTTP, generations or
reputation: those call in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import math
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aitherfwd.adapters import memory
from aitherfwd.adapters.store import Store
from aitherfwd.audit_records import Blocked, BlockExpired, Unblocked
from aitherfwd.clock import Clock
from aitherfwd.control.bulkblocks import BulkBlocks
from aitherfwd.control.schema import BlockSpec
from aitherfwd.daemon.blocks_kernel import BlockKernelView
from aitherfwd.daemon.ports import AuditSink, Conntrack
from aitherfwd.daemon.writer import KernelWriter
from aitherfwd.dynamic.blockrecords import BlockList, unpack
from aitherfwd.dynamic.blocks import Batch, Block, BlockTable, address_text, check_batch
from aitherfwd.errors import AitherError, ApplyError, RequestError
from aitherfwd.policy.model import IPAddress, IPNetwork, Policy
from aitherfwd.stats import Stats

log = logging.getLogger(__name__)
# Conntrack cuts queued at most: each is a filtered dump and a burst of deletes, one at a time in
# the background; beyond this, bans rely on the drop-before-established rule alone.
CONNTRACK_QUEUE = 256
CONNTRACK_CUT_PAUSE = 0.05
# Live admin sessions (conntrack, established to settings.admin_ports) are asked at most
# this often for the anti-lockout of automatic blocks: a dump walks the kernel's conntrack hash.
ADMIN_PEERS_TTL = 2.0
_new = tuple.__new__  # a `Block` made in C (0.1 µs, not 0.2: a bulk request makes 100,000)
_FAMILY = (socket.AF_INET, socket.AF_INET6)  # by "is IPv6"
Actor = dict[str, int]  # uid, gid, pid of an API caller (SO_PEERCRED)
Events = dict[str, list[dict[str, Any]]]  # threat events that led to a block, by address


@dataclass(frozen=True, slots=True)
class BlocksStatus:
    counts: dict[str, int]  # blocks per kernel set
    total: int


class BlockService(BlockKernelView):
    def __init__(  # noqa: PLR0917 - the ports, wired in daemon/services.py
        self,
        clock: Clock,
        writer: KernelWriter,
        store: Store,
        audit: AuditSink,
        conntrack: Conntrack,
        stats: Stats,
    ) -> None:
        self.clock, self.writer, self.store, self.audit = clock, writer, store, audit
        self.conntrack, self.stats = conntrack, stats
        self.table = BlockTable()
        self._cuts: asyncio.Queue[IPAddress] = asyncio.Queue(CONNTRACK_QUEUE)
        self._cut_wake = asyncio.Event()
        # told of every block that expired or was lifted (reputation follows its blocks)
        self.on_expired: Callable[[Block, float], None] = lambda blk, now: None
        self.on_unblocked: Callable[[Block, float], None] = lambda blk, now: None
        # told of every batch of blocks the kernel took (the watch streams and the fleet
        # chain themselves in front of the hook they find)
        self.on_blocked: Callable[[Sequence[Block], float], None] = lambda made, now: None
        self._admin_ports: tuple[int, ...] = ()
        self._resolvers: tuple[IPAddress, ...] = ()
        self._admin_peers: set[IPAddress] = set()
        self._admin_peers_at = -math.inf  # monotonic time of the last conntrack dump
        # whether conntrack may hold entries of a source (packed address); False skips its cut
        self.may_hold: Callable[[bytes], bool] = lambda source: True
        self.cuts_skipped = 0
        self._checkpoint: asyncio.Future[None] | None = None  # the last large write's

    def configure(self, policy: Policy) -> None:
        """A policy took effect: the management zone and never_block are protected."""
        mgmt = [c for z in policy.zones if z.name == "management" for c in z.cidrs]
        never = policy.reputation.never_block
        self.table.protected = self.table.protected[:2] + tuple(mgmt) + never
        self._admin_ports = tuple(policy.settings.admin_ports)
        self._resolvers = policy.egress.resolvers if policy.egress is not None else ()
        self._admin_peers_at = -math.inf

    async def lockout(self, nets: Sequence[IPNetwork]) -> dict[str, str]:
        """Anti-lockout of automatic blocks (reputation, detection): the targets that hold
        a live admin session (established to an admin port, asked of conntrack at most
        every ADMIN_PEERS_TTL seconds) or are an egress resolver, with why. Manual blocks
        by an administrator are not checked: blocking a session is their explicit choice."""
        if not nets:
            return {}
        guarded = await self.guarded()
        out: dict[str, str] = {}
        for net in nets if guarded else ():
            for address, why in guarded:
                if address.version == net.version and address in net:
                    out[address_text(net)] = f"{address} {why}"
                    break
        return out

    async def guarded(self) -> list[tuple[IPAddress, str]]:
        """The addresses the anti-lockout keeps automatic blocks off, with why (empty
        mostly: a caller with many targets asks this first and builds no networks)."""
        mono = self.clock.monotonic()
        if self._admin_ports and mono - self._admin_peers_at >= ADMIN_PEERS_TTL:
            self._admin_peers_at = mono
            try:
                peers = await asyncio.to_thread(self.conntrack.established_peers, self._admin_ports)
                self._admin_peers = {p for p, _ in peers}
            except (AitherError, OSError) as exc:
                log.warning("anti-lockout: conntrack unavailable error=%s", exc)
        guarded = [(a, "holds a live admin session") for a in sorted(self._admin_peers, key=str)]
        guarded += [(a, "is an egress resolver") for a in self._resolvers]
        return guarded

    def status(self) -> BlocksStatus:
        self.expire()  # recorded, not only pruned by the counts
        now = self.clock.now()
        return BlocksStatus(self.table.counts(now), len(self.table))

    # --- changes -----------------------------------------------------------------------------

    async def block(
        self,
        specs: Sequence[BlockSpec] | BulkBlocks,
        source: str = "manual",
        actor: Actor | None = None,
        events: Events | None = None,
        checked: bool = False,
    ) -> Sequence[Block]:
        """Store first (a failing disk is reported, not fatal), then one kernel transaction.
        `specs`: one per block, or a bulk request's columns (the same blocks, a
        `BlockList`). `checked`: the caller judged every key against the table just
        before (the fleet).
        Blocks already due expire first (closed as expired in the history and the audit
        trail), so a block that lapsed moments ago is not replaced as if still active."""
        self.expire()  # cheap when nothing is due: a look at the expiry heap's top
        now = self.clock.now()
        # BlockError: E-PROTECTED, E-BLOCK-OVERLAP; nothing has changed yet
        if isinstance(specs, BulkBlocks):
            blocks, saved, commands, previous = self._put_columns(specs, source, now, not checked)
        else:
            blocks, saved, commands, previous = self._put_records(
                specs, source, now, events, not checked
            )
        try:
            await self.writer.elements(commands)
        except ApplyError:
            if saved is not None:
                await saved  # the revert comes after the write
            self._revert(blocks, previous())
            raise
        if saved is not None:
            await saved  # answered once both hold the blocks
            # the WAL copied to the database after the answer, from a thread
            self._checkpoint = asyncio.get_running_loop().run_in_executor(
                None, self.store.checkpoint
            )
        self.stats.blocked(source, len(blocks))
        if len(blocks) >= memory.LARGE_BATCH:
            del commands
            memory.trim()  # the batch is garbage now
            memory.trim_later()  # and the request's body and JSON once it is answered
        ttl, reason = _shared(specs)
        self.audit.write(
            now,
            Blocked(
                source_ip=blocks[0].key if blocks else None,
                count=len(blocks),
                source=source,
                addresses=tuple(b.key for b in blocks[:100]),
                ttl=ttl,
                reason=reason,
                actor=actor,
            ),
        )
        self._queue_cuts(blocks)
        self.on_blocked(blocks, now)
        return blocks

    def _put_records(
        self,
        specs: Sequence[BlockSpec],
        source: str,
        now: float,
        events: Events | None,
        check: bool,
    ) -> _Put:
        """`block`'s steps up to the kernel write, a `Block` per spec: checked, stored (a
        large batch from a thread while the kernel takes it), put in the table."""
        blocks = _records(specs, source, now)
        texts = [blk.key for blk in blocks]
        keys = self.table.checked_keys(texts, now, check=check)
        check_batch(texts)
        previous = self.table.held(keys, texts, now)
        saved = self._save(blocks, events)
        return blocks, saved, self.table.put(blocks, now, keys), lambda: previous

    def _put_columns(self, bulk: BulkBlocks, source: str, now: float, check: bool) -> _Put:
        """The same for a bulk request's columns: the store is handed the write as soon as
        the keys are checked (it extends the keys it holds by itself: it need not wait for
        the table to say which are held), and what the table held is known from
        `put_list` (made into `_revert`'s form only if the kernel refuses)."""
        blocks, keys = self._columns(bulk, source, now, check)
        saved = self._save(blocks, None)
        commands, taken = self.table.put_list(blocks, now, keys)

        def previous() -> dict[str, Batch]:
            live = [
                (b, ks) for b, ks in taken.items() if b.expires_at is None or b.expires_at > now
            ]
            return {unpack(k): b for b, ks in live for k in ks}

        return blocks, saved, commands, previous

    def _save(self, blocks: Sequence[Block], events: Events | None) -> asyncio.Future[bool] | None:
        """Store the blocks: at once, or (a large batch) from a thread while the kernel
        takes them (both mostly GIL-free), handed to it now, not at the loop's next turn."""
        if len(blocks) < memory.LARGE_BATCH:
            self.store.save_blocks(blocks, events=events)
            return None
        write = self.store.blocks_writer(blocks, events=events)
        return asyncio.get_running_loop().run_in_executor(None, write)

    def _columns(
        self, bulk: BulkBlocks, source: str, now: float, check: bool
    ) -> tuple[BlockList, list[int]]:
        """A bulk request's blocks and table keys as columns (`BlockList`, packed IPv4
        addresses), checked all at once. An address named twice counts once, at its first
        place, as `_records` keeps it."""
        texts, packed = bulk.texts, bulk.packed
        if len(set(packed)) != len(packed):
            first = dict(zip(texts, packed, strict=True))  # canonical: one text per address
            texts, packed = list(first), list(first.values())
        keys = list(struct.unpack(f"!{len(packed)}I", b"".join(packed)))
        if check:
            self.table.checked_v4(keys, texts, now)
        expires = now + bulk.ttl if bulk.ttl else None
        return BlockList(texts, expires, bulk.reason, source, now), keys

    def _revert(self, blocks: Sequence[Block], previous: dict[str, Batch]) -> None:
        now = self.clock.now()
        for blk in blocks:
            self.table.remove(blk.key, now)
        held = [batch.block(text) for text, batch in previous.items()]
        self.table.load(held)
        self.store.end_blocks(
            (b.key for b in blocks if b.key not in previous), now, "kernel refused"
        )
        self.store.save_blocks(held)

    async def unblock(self, network: IPNetwork, actor: Actor | None = None) -> Block:
        now = self.clock.now()
        key = address_text(network)
        removed = self.table.remove(key, now)
        if removed is None:
            raise RequestError(f"{key} is not blocked", code="E-NOT-BLOCKED")
        blk, commands = removed
        try:
            await self.writer.elements(commands)
        except ApplyError:
            self.table.load([blk])
            raise
        self.store.end_blocks([key], now, "unblocked")
        self.stats.unblocked()
        self.audit.write(
            now, Unblocked(source_ip=key, reason=blk.reason, source=blk.source, actor=actor)
        )
        self.on_unblocked(blk, now)
        return blk

    def expire(self) -> int:
        """Forget blocks past their expiry (the kernel expired their elements itself)."""
        now = self.clock.now()
        expired = self.table.take_lapsed() + self.table.prune(now)
        if not expired:
            return 0
        self.stats.expired(len(expired))
        self.store.end_blocks((b.key for b in expired), now, "expired")
        for blk in expired:
            self.audit.write(
                now, BlockExpired(source_ip=blk.key, reason=blk.reason, source=blk.source)
            )
            self.on_expired(blk, now)
        return len(expired)

    # --- conntrack cuts ----------------------------------------------------------------------

    def _queue_cuts(self, blocks: Sequence[Block]) -> None:
        """Queue the cuts of a request's first CONNTRACK_QUEUE single addresses at most (a
        bulk request's others keep their entries until these time out), skipping those
        conntrack is known to hold nothing of."""
        singles = (blk.key for blk in blocks if blk.single)
        for key in itertools.islice(singles, CONNTRACK_QUEUE):
            if self._cuts.full():
                break
            if not self.may_hold(socket.inet_pton(_FAMILY[":" in key], key)):
                self.cuts_skipped += 1
                continue
            self._cuts.put_nowait(ipaddress.ip_address(key))
            self._cut_wake.set()

    async def run_cuts(self) -> None:
        """Delete the blocked sources' conntrack entries, one at a time, in the background
        (their packets are already dropped before the established rule; this frees the
        tracking state that would otherwise linger for the established timeout)."""
        while True:
            address = await self._cuts.get()
            try:
                await asyncio.to_thread(self.conntrack.delete_source, address)
            except (AitherError, OSError) as exc:
                log.debug("conntrack flush failed address=%s error=%s", address, exc)
            # paced: the cuts run after the bans and must not compete with requests
            await asyncio.sleep(CONNTRACK_CUT_PAUSE)


# what `block` has once the kernel write is ready: the blocks, the store's write if it runs
# in a thread, the kernel commands, and what the table held before (for `_revert`)
_Put = tuple[
    Sequence[Block], "asyncio.Future[bool] | None", list[Any], Callable[[], dict[str, Batch]]
]


def _shared(specs: Sequence[BlockSpec] | BulkBlocks) -> tuple[int | None, str | None]:
    """The TTL and reason the audit record names for a request: its first block's."""
    if isinstance(specs, BulkBlocks):
        return specs.ttl, specs.reason
    return (specs[0].ttl, specs[0].reason) if specs else (None, None)


def _records(specs: Sequence[BlockSpec], source: str, now: float) -> list[Block]:
    """A request's blocks, one per key (a key named twice: its first place)."""
    seen: set[str] = set()
    blocks = []
    expiry: dict[int, float] = {}  # one float per distinct TTL, shared by its blocks
    for spec in specs:
        if spec.key in seen:
            continue
        expires = expiry.setdefault(spec.ttl, now + spec.ttl) if spec.ttl else None
        seen.add(spec.key)
        blocks.append(_new(Block, (spec.key, expires, spec.reason, source, now)))
    return blocks
