"""The fleet's part of the control API (layer L3): handlers that daemon/api.py's route
table lists.

Owns: `POST /v1/fleet/blocks` (block here and share with the fleet: `aitherfwd block
--fleet`), `DELETE /v1/fleet/blocks/ADDR` (lift here if blocked and tell the fleet:
`aitherfwd unblock --fleet`), `POST /v1/fleet/policy` (validate and publish a policy:
`aitherfwd fleet push-policy FILE`) and `GET /v1/fleet` (the bus, backlog, counters). A
daemon without `[fleet]` answers 409 E-FLEET-OFF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aitherfwd.adapters.control_server import HttpRequest
from aitherfwd.control import jsonbody, schema
from aitherfwd.daemon import views
from aitherfwd.daemon.services import Services
from aitherfwd.dynamic.blocks import address_text
from aitherfwd.errors import RequestError

if TYPE_CHECKING:
    from aitherfwd.daemon.fleet import FleetService


def _fleet(d: Services) -> FleetService:
    if d.fleet is None:
        raise RequestError("no fleet: the daemon config has no [fleet] section", code="E-FLEET-OFF")
    return d.fleet


def _actor(req: HttpRequest) -> dict[str, int]:
    return {"uid": req.peer.uid, "gid": req.peer.gid, "pid": req.peer.pid}


async def status(d: Services, req: HttpRequest) -> Any:
    return _fleet(d).status().as_dict()


async def push_policy(d: Services, req: HttpRequest) -> Any:
    fleet = _fleet(d)
    body = jsonbody.decode(req.body)
    text = body.get("policy") if isinstance(body, dict) and len(body) == 1 else None
    if not isinstance(text, str):
        raise RequestError('the body must be {"policy": "<the policy text>"}', code="E-SCHEMA")
    if fleet.policy is None:  # wired with every fleet; a test double may lack it
        raise RequestError("this fleet cannot publish policies", code="E-FLEET-OFF")
    return await fleet.policy.push(text)


async def add_blocks(d: Services, req: HttpRequest) -> Any:
    fleet = _fleet(d)
    specs = schema.parse_blocks(jsonbody.decode(req.body))
    made = await d.blocks.block(specs, actor=_actor(req))
    shared = fleet.share_blocks(made, d.ports.clock.now())
    return {
        "count": len(made),
        "shared": shared,
        "blocked": [views.block_view(b) for b in made[:1000]],
    }


async def delete_block(d: Services, req: HttpRequest) -> Any:
    fleet = _fleet(d)
    network = schema.network_from_path(req.path.removeprefix("/v1/fleet/blocks/"))
    key = address_text(network)
    lifted = None
    if d.blocks.table.get(key, d.ports.clock.now()) is not None:
        lifted = views.block_view(await d.blocks.unblock(network, actor=_actor(req)))
    fleet.share_unblock(key, d.ports.clock.now())
    return {"address": key, "unblocked": lifted, "shared": True}
