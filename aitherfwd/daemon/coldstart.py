"""The cold start's kernel half (layer L3): adopt or apply the ruleset with the restore.

Owns: `adopt_or_apply`, run in the kernel writer's thread — the table adopted when it
already enforces the ruleset, else applied in one transaction with the first stored
blocks; the rest of the store streamed into the block table and the kernel chunk by chunk
(daemon/prefetch.py), the grants after them; the kernel's listing reconciled only when the
store may not know everything it holds (`store_complete`). `Generations.cold_start` calls
it; everything else of the start (the policy, the audit line, the status) stays there.
"""

from __future__ import annotations

import itertools
import logging

from aitherfwd.adapters.store import Store
from aitherfwd.clock import Clock
from aitherfwd.compiler import Ruleset
from aitherfwd.daemon.blocking import BlockService
from aitherfwd.daemon.egress import EgressRuntime
from aitherfwd.daemon.elements import FIRST_RESTORE_BATCH, RESTORE_BATCH
from aitherfwd.daemon.ports import Kernel
from aitherfwd.daemon.prefetch import prefetched
from aitherfwd.errors import ApplyError
from aitherfwd.nft.builders import element_batches
from aitherfwd.reconcile import plan, transaction

log = logging.getLogger(__name__)


def adopt_or_apply(
    kernel: Kernel,
    ruleset: Ruleset,
    clock: Clock,
    *,
    blocks: BlockService,
    egress: EgressRuntime,
    store: Store,
) -> bool:
    """Adopt a table that already enforces this ruleset (no gap), else apply it — in
    the same transaction as the stored blocks with their remaining timeouts (`add` is a
    no-op for an element the kernel still has), RESTORE_BATCH elements per transaction:
    beyond that, the first batch comes with the table and the rest follow at once
    (one 1,000,000-element call would leave the host without a table twice as long).
    Kernel blocks and grants the store does not know (its database was lost, a write
    failed on a full disk, another tool added them) are listed and adopted only when the
    store cannot be complete (`store_complete`)."""
    before = kernel.observe()
    adopted = before.exists and not plan(ruleset, before).changed
    now = clock.now()
    # the store's rows read into the block table a chunk at a time, in a thread of
    # their own, while this one sends the chunk before (nothing is served yet): the
    # elements of 1,000,000 blocks never exist at once, and SQLite's and the kernel's
    # work overlap; the first, small chunk goes with the table (libnftables' JSON)
    stream = prefetched(
        blocks.load_batches(now, FIRST_RESTORE_BATCH, RESTORE_BATCH), name="restore"
    )
    batches = itertools.chain(
        stream,
        element_batches(egress.restore_commands(now, domains=False), RESTORE_BATCH),
    )
    static = [] if adopted else transaction(ruleset, before)
    errors = store.write_errors
    full = False
    try:
        first = next(batches, [])
        if static or first:
            kernel.run(static + first)
        static = first = []  # in force now
        for batch in batches:
            kernel.run(batch)
            del batch  # before the next one is made
    except ApplyError as exc:  # e.g. a kernel prefix overlapping a stored one
        log.warning("restore refused, reconciling element by element error=%s", exc.message)
        stream.close()  # the rest of the store read into the table, not sent
        if static:
            kernel.run(static)
        full = True  # the grants were in the refused batch too
    finally:
        stream.close()  # whatever happened, the table is whole (a no-op when it is)
    # after the load: whether the store holds any block decides it
    full = full or (before.exists and not store_complete(store, blocks))
    if full:
        blocks.reconcile(kernel, now)
        egress.reconcile(kernel, now)
    if store.write_errors == errors:  # everything the kernel holds is stored now
        store.incomplete.clear()
    return adopted


def store_complete(store: Store, blocks: BlockService) -> bool:
    """Whether the store knows every dynamic element the kernel may hold, so the cold
    start need not list the kernel's sets (~5 µs per element: 5 s for 1,000,000). Not
    when the database was moved aside, when a write failed since the last complete
    start (the store's `incomplete` marker, kept across restarts), or when it holds no
    blocks at all (nothing to list against, and listing an empty set is free)."""
    return store.recovered is None and not store.incomplete.is_set and len(blocks.table) > 0
