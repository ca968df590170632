"""The fleet's policy (layer L3): pushed to a JetStream KV bucket, followed by hosts.

Owns: `push` (an administrator's policy text: validated here before it is published, as
`aitherfwd fleet push-policy FILE` asks) and `follow` (on hosts whose `[fleet] share`
lists "policy": read the bucket's revision every POLL seconds; a new one is written to
`fleet-policy.yaml` in the state directory, validated again and applied as a reload of
that file — the same validation, anti-lockout and fail-static rules as a local reload).
A revision that is invalid or would lock out a live admin session is refused: the running
policy stays, `status` says why, and the next revision is tried. Knows nothing of NATS.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aitherfwd.daemon.generations import Generations, Loader
from aitherfwd.daemon.ports import Bus
from aitherfwd.fleet.messages import BusError
from aitherfwd.policy.diagnostics import Severity

log = logging.getLogger(__name__)
POLL = 2.0  # seconds between reads of the bucket's revision
MAX_POLICY = 1 << 20  # bytes of a pushed policy (the control socket's default body limit)


class FleetPolicy:
    def __init__(self, bus: Bus, generations: Generations, load: Loader, state_dir: Path) -> None:
        self.bus, self.generations, self.load = bus, generations, load
        self.file = state_dir / "fleet-policy.yaml"  # the revision in force (or tried last)
        self.staging = state_dir / "fleet-policy.push.yaml"  # a push being validated
        self.local = generations.policy_path  # the host's own file: its cold-start policy
        self.revision: int | None = None  # the fleet revision in force here
        self.seen: int | None = None  # the last revision read (applied or refused)
        self.result = ""  # applied | rejected | unchanged
        self.errors: list[dict[str, Any]] = []

    def status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "last_seen": self.seen,
            "last_result": self.result or None,
            "errors": self.errors,
        }

    async def push(self, text: str) -> dict[str, Any]:
        """Validate, then publish: `{"result": "published", "revision": N}` or
        `{"result": "rejected", "errors": [...]}`."""
        data = text.encode()
        if len(data) > MAX_POLICY:
            err = {"code": "E-POLICY", "message": f"the policy exceeds {MAX_POLICY} bytes"}
            return {"result": "rejected", "errors": [err]}
        errors = await self._validate(self.staging, data)
        if errors:
            return {"result": "rejected", "errors": errors}
        revision = await self.bus.put_policy(data)
        log.info("fleet policy published revision=%d bytes=%d", revision, len(data))
        return {"result": "published", "revision": revision}

    async def _validate(self, path: Path, data: bytes) -> list[dict[str, Any]]:
        await asyncio.to_thread(path.write_bytes, data)
        result = await asyncio.to_thread(self.load, path)
        return [d.as_dict() for d in result.diagnostics if d.severity is Severity.ERROR]

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            if not self.bus.connected:
                continue
            try:
                got = await self.bus.get_policy()
            except BusError as exc:
                log.warning("fleet policy unreadable error=%s", exc)
                continue
            if got is not None and got[0] != self.seen and len(got[1]) <= MAX_POLICY:
                await self.apply(*got)

    async def apply(self, revision: int, data: bytes) -> str:
        """Write the revision beside the state, reload from it; on refusal, go back to
        the local file for the next local reload (the running generation stays)."""
        self.seen = revision
        await asyncio.to_thread(self.file.write_bytes, data)
        gens = self.generations
        before = gens.policy_path
        gens.policy_path = self.file
        outcome = await gens.reload(trigger="fleet")
        self.result, self.errors = outcome.result, outcome.errors
        if outcome.result == "rejected":
            gens.policy_path = before
            log.error(
                "fleet policy refused; the running policy stays revision=%d errors=%d",
                revision,
                len(outcome.errors),
            )
        else:
            self.revision = revision
            log.info("fleet policy in force revision=%d result=%s", revision, outcome.result)
        return outcome.result
