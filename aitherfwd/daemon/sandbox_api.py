"""Control-API handlers for sandbox grants and outbound evaluation by host (layer L3).

Owns: `POST /v1/sandbox`, `GET /v1/sandbox`, `DELETE /v1/sandbox/{destination}` and the
`dest_host` form of `POST /v1/evaluate` (each address the name resolves to, judged as the
kernel would). Routing and roles live in daemon/api.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from aitherfwd.adapters.control_server import HttpRequest
from aitherfwd.control.jsonbody import decode
from aitherfwd.control.sandbox import destination, parse_grant
from aitherfwd.control.schema import EvaluateSpec
from aitherfwd.daemon import views
from aitherfwd.daemon.egress import Caller
from aitherfwd.daemon.services import Services
from aitherfwd.egress.sandbox import key_of


def _actor(req: HttpRequest) -> dict[str, int]:
    return {"uid": req.peer.uid, "gid": req.peer.gid, "pid": req.peer.pid}


async def grant(d: Services, req: HttpRequest) -> Any:
    spec = parse_grant(decode(req.body))
    caller = Caller(req.peer.uid, req.peer.gid, tuple(req.peer.groups))
    return await d.egress.grant(spec, caller, _actor(req))


async def list_grants(d: Services, req: HttpRequest) -> Any:
    now = d.ports.clock.now()
    live = d.egress.grants.active(now)
    return {"count": len(live), "grants": [d.egress.view(g, now) for g in live]}


async def revoke(d: Services, req: HttpRequest) -> Any:
    segment = req.path.removeprefix("/v1/sandbox/")
    net, host = destination(segment)
    target = key_of(net) if net is not None else (host or "")
    removed = await d.egress.revoke(target, _actor(req))
    now = d.ports.clock.now()
    return {"revoked": [d.egress.view(g, now) for g in removed]}


async def evaluate_host(d: Services, spec: EvaluateSpec) -> Any:
    """Every address of the name: the connection may go to any of them, so the answer is
    allow only when all of them are allowed (else the first that is not)."""
    host = spec.dest_host or ""
    nets = await d.egress.dns.addresses(host)
    answers = []
    for net in nets:
        address = ipaddress.ip_address(net.network_address)
        judged = d.queries.evaluate(replace(spec, dest=address, dest_host=None))
        v = views.judgement_view(judged, outbound=spec.direction == "outbound")
        answers.append({"address": str(address), **v})
    worst = next((a for a in answers if a["verdict"] != "allow"), answers[0])
    return {
        "verdict": worst["verdict"],
        "action": worst["verdict"],
        "rule": worst["rule"],
        "reason": worst["reason"],
        "dest_host": host,
        "addresses": answers,
    }
