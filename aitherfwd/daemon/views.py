"""What the daemon answers about itself (layer L3): the status document assembled from the
services' `status()` snapshots, a block and a verdict as the API shows them, and `explain`
(everything known about one address). Reads; changes nothing; knows no HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from aitherfwd.adapters.audit import rfc3339
from aitherfwd.daemon.queries import Judgement
from aitherfwd.daemon.reputation import ThreatOutcome
from aitherfwd.daemon.services import Services
from aitherfwd.dynamic import reputation
from aitherfwd.dynamic.blocks import Block, BlockList, address_text, set_for_key
from aitherfwd.dynamic.reputation import offender_key
from aitherfwd.evaluator import FORWARD, Request, Verdict
from aitherfwd.forwarding import ForwardPaths
from aitherfwd.nft import names as n
from aitherfwd.policy.model import IPAddress, Protocol


def explain(
    d: Services, address: IPAddress, ports: Sequence[int], protocol: Protocol
) -> dict[str, Any]:
    """Everything the firewall knows about one address: verdicts now, the block that
    stops it, its reputation and the events that led to each of its blocks."""
    gen = d.generations.current()
    now = d.ports.clock.now()
    table = d.blocks.table
    settings = gen.policy.reputation
    key = str(address)
    okey = address_text(offender_key(address, settings))
    verdicts = []
    for port in ports or gen.policy.settings.admin_ports:
        v = gen.evaluator.evaluate(Request(address, protocol, port), now, table, geo=d.geo)
        verdicts.append(
            {
                "port": port,
                "protocol": str(protocol),
                "verdict": v.verdict,
                "rule": v.rule,
                "zone": v.zone,
                "reason": v.reason,
                **_origin(v),
            }
        )
    target = ForwardPaths(gen.policy).sample(address.version)
    forward = []  # to a published container port (forward path), when containers exist
    for port in (ports or gen.policy.settings.admin_ports) if target is not None else ():
        v = gen.evaluator.evaluate(Request(address, protocol, port, FORWARD, target), now, table)
        forward.append({"port": port, "protocol": str(protocol), "verdict": v.verdict})
        forward[-1].update({"rule": v.rule, "zone": v.zone, "reason": v.reason})
    current = table.covering(address, now)
    off = d.reputation.offenders.get(okey)
    keys = sorted({key, okey} | ({current.key} if current else set()))
    return {
        "address": key,
        "zone": verdicts[0]["zone"] if verdicts else None,
        "verdicts": verdicts,
        "forward_verdicts": forward,
        "blocked": current is not None,
        "block": None
        if current is None
        else {
            **block_view(current),
            "remaining_seconds": current.remaining(now),
        },
        "reputation": {
            "key": okey,
            "score": round(reputation.decayed(off, now, settings), 3) if off else 0.0,
            "threshold": settings.threshold,
            "events": off.events if off else 0,
            "blocks_in_memory": len(off.blocks) if off else 0,
            "permanent": off.permanent if off else False,
            "recent_events": list(d.reputation.recent.get(okey, ())),
        },
        "history": [
            {
                "address": h.key,
                "reason": h.reason,
                "source": h.source,
                "started_at": rfc3339(h.started_at),
                "expires_at": rfc3339(h.expires_at) if h.expires_at is not None else None,
                "ended_at": rfc3339(h.ended_at) if h.ended_at is not None else None,
                "end_reason": h.end_reason,
                "events": h.events,
            }
            for h in d.ports.store.history(keys)
        ],
    }


def block_view(blk: Block) -> dict[str, Any]:
    return {
        "address": blk.key,
        "expires_at": rfc3339(blk.expires_at) if blk.expires_at is not None else None,
        "reason": blk.reason,
        "source": blk.source,
        "created_at": rfc3339(blk.created_at),
        "set": blk.set_name,
    }


def block_views(blocks: Sequence[Block], limit: int) -> list[dict[str, Any]]:
    """`block_view` of the first `limit` blocks; a `BlockList`'s share their times, formatted
    once (a bulk request's answer lists 1,000)."""
    if not isinstance(blocks, BlockList) or not blocks:
        return [block_view(b) for b in blocks[:limit]]
    shared = block_view(blocks[0])
    return [{**shared, "address": t, "set": set_for_key(t)} for t in blocks.texts[:limit]]


def _origin(v: Verdict) -> dict[str, Any]:
    """`country` and `lists` of a verdict, when a geoip database or lists are loaded."""
    return {"country": v.country, "lists": list(v.lists)}


def judgement_view(j: Judgement, *, outbound: bool, expect: str | None = None) -> dict[str, Any]:
    v = j.verdict
    return {
        "verdict": v.verdict,
        **({"action": v.verdict} if outbound else {}),
        "rule": v.rule,
        "rule_name": v.rule,  # the seed's name for `rule`
        "zone": v.zone,
        "reason": v.reason,
        **_origin(v),
        "latency_us": j.latency_us,
        **({"expected": v.verdict == expect} if expect is not None else {}),
    }


def threats_view(outcome: ThreatOutcome) -> dict[str, Any]:
    return {
        "accepted": outcome.accepted,
        "blocked": [block_view(b) for b in outcome.blocked],
        "protected": outcome.protected,
    }


def status(d: Services) -> dict[str, Any]:
    """GET /v1/status: one section per service, from its snapshot."""
    g = d.generations.status()
    gen = d.generations.current()
    now = d.ports.clock.now()
    counts = {s.name: 0 for s in n.DYNAMIC_SETS}
    counts.update(d.blocks.status().counts)
    counts.update(d.egress.grants.set_counts(now))
    rep = d.reputation.status()
    store, audit, notes = d.ports.store, d.ports.audit, d.ports.notifier.stats
    budget = d.audit_budget
    last = g.last_reload
    return {
        "status": "ok",
        "generation": gen.number,
        "policy_path": str(gen.path),
        "policy_sha256": gen.policy.sha256,
        "ruleset_sha256": gen.ruleset.sha256,
        "rules": len(gen.policy.rules),
        "applied_at": rfc3339(gen.applied_at),
        "last_reload": None
        if last is None
        else {**last.as_dict(), "at": rfc3339(last.at), "trigger": last.trigger},
        "elements": counts,
        "drift_repairs": g.drift_repairs,
        "reloads": g.reloads,
        "reputation": {
            "offenders": rep.offenders,
            "pruned": d.reputation.pruned,  # offenders forgotten since start (decayed, cap)
            "threat_events": rep.threat_events,
        },
        "journal": asdict(d.journal.status()) if d.journal is not None else None,
        "store": {
            "write_errors": store.write_errors,
            "disk_full": store.disk_full,
            "recovered": store.recovered,
            "persistent": store.unpersisted is None,
            "unpersisted": store.unpersisted,
            "pending_rows": store.pending_rows,  # failed writes kept to retry, in order
            "dropped_rows": store.dropped_rows,
        },
        "audit": {
            "write_errors": audit.errors,
            "rotations": audit.rotations,
            "folded": budget.folded if budget else 0,  # automated records a summary stands for
            "summaries": budget.summaries if budget else 0,
        },
        "notifications": {
            "sent": notes.sent,
            "failed": notes.failed,
            "dropped": notes.dropped,
            "retries": notes.retries,
        },
        **d.egress.status(now),  # "sandbox" and "egress_dns"
        "uptime_seconds": round(now - d.started_at, 1),
        "start_seconds": g.start_seconds,
        "kernel": {
            # every nftables transaction sent (the metric aitherfwd_kernel_transactions_total)
            "transactions_ok": d.stats.kernel_transactions["ok"],
            "transactions_failed": d.stats.kernel_transactions["failed"],
            # jobs of the serialized writer (one coalesced batch of element changes may
            # carry many requests' changes; one cold start may be many transactions)
            "writer_jobs_ok": d.writer.stats.jobs_ok,
            "writer_jobs_failed": d.writer.stats.jobs_failed,
            "writer_healthy": d.writer.healthy(),
        },
        **_conntrack(d),
        "geo": d.geo.status(),
        "fleet": None if d.fleet is None else d.fleet.status().as_dict(),
    }


def _conntrack(d: Services) -> dict[str, Any]:
    """The detection's status, with the blocks' conntrack cuts in its conntrack part."""
    out = d.detection.status()
    out["conntrack"]["cuts_skipped"] = d.blocks.cuts_skipped  # the source held no entry
    return out
