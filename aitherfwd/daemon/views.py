"""What the daemon answers about itself (layer L3): the status document, a block as the API
shows it, and `explain` (everything known about one address). Reads the daemon's state;
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aitherfwd.adapters.audit import rfc3339
from aitherfwd.dynamic import reputation
from aitherfwd.dynamic.blocks import Block, address_text
from aitherfwd.dynamic.reputation import offender_key
from aitherfwd.evaluator import Request
from aitherfwd.nft import names as n
from aitherfwd.policy.model import IPAddress, Protocol

if TYPE_CHECKING:
    from aitherfwd.daemon.app import Daemon


def explain(
    d: Daemon, address: IPAddress, ports: Sequence[int], protocol: Protocol
) -> dict[str, Any]:
    """Everything the firewall knows about one address: verdicts now, the block that
    stops it, its reputation and the events that led to each of its blocks."""
    gen = d.current()
    now = d.clock.now()
    settings = gen.policy.reputation
    key = str(address)
    okey = address_text(offender_key(address, settings))
    verdicts = []
    for port in ports or gen.policy.settings.admin_ports:
        v = gen.evaluator.evaluate(Request(address, protocol, port), now, d.blocks)
        verdicts.append(
            {
                "port": port,
                "protocol": str(protocol),
                "verdict": v.verdict,
                "rule": v.rule,
                "zone": v.zone,
                "reason": v.reason,
            }
        )
    current = d.blocks.covering(address, now)
    off = d.offenders.get(okey)
    keys = sorted({key, okey} | ({current.key} if current else set()))
    return {
        "address": key,
        "zone": verdicts[0]["zone"] if verdicts else None,
        "verdicts": verdicts,
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
            "recent_events": list(d.recent.get(okey, ())),
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
            for h in d.store.history(keys)
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


def status(d: Daemon) -> dict[str, Any]:
    gen = d.current()
    now = d.clock.now()
    counts = {s.name: 0 for s in n.DYNAMIC_SETS}
    counts.update(d.blocks.counts(now))
    counts.update(d.egress.grants.set_counts(now))
    last = d.last_reload
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
        "drift_repairs": d.counters.drift_repairs,
        "reloads": dict(sorted(d.counters.reloads.items())),
        "reputation": {
            "offenders": len(d.offenders),
            "threat_events": dict(sorted(d.threat_counts.items())),
        },
        "store": {
            "write_errors": d.store.write_errors,
            "disk_full": d.store.disk_full,
            "recovered": d.store.recovered,
        },
        "audit": {"write_errors": d.audit.errors, "rotations": d.audit.rotations},
        "notifications": {
            "sent": d.notifier.stats.sent,
            "failed": d.notifier.stats.failed,
            "dropped": d.notifier.stats.dropped,
            "retries": d.notifier.stats.retries,
        },
        **d.egress.status(now),  # "sandbox" and "egress_dns"
        "uptime_seconds": round(now - d.started_at, 1),
        "start_seconds": d.start_seconds,
        "kernel": {
            "transactions_ok": d.writer.stats.transactions_ok,
            "transactions_failed": d.writer.stats.transactions_failed,
        },
        **(d.detection.status() if d.detection is not None else {}),
    }
