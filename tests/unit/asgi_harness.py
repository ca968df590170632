"""A daemon's control plane on fakes, served on a real control socket in a thread's event loop:
the real API (`GET /v1/watch`, `/v1/evaluate`, `/v1/threats` …), the real transport, fake
kernel. For the middleware's unit tests: they follow and question it like a real daemon."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aitherfwd.adapters.control_client import ControlClient
from aitherfwd.adapters.control_server import ControlServer
from aitherfwd.control.limits import ControlLimits
from aitherfwd.daemon.api import Api
from aitherfwd.roles import Authorizer, RoleMembers
from aitherfwd.testing import FakeDaemon, fake_daemon

T = TypeVar("T")


class Served:
    def __init__(self, fake: FakeDaemon, api: Api, loop: asyncio.AbstractEventLoop, sock: Path):
        self.fake, self.api, self.loop, self.socket = fake, api, loop, sock
        self.client = ControlClient(sock, timeout=5)

    def call(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine in the daemon's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(body(), self.loop).result(10)

    def block(self, address: str, ttl: int = 0) -> Any:
        return self.client.request("POST", "/v1/blocks", {"address": address, "ttl": ttl or None})

    def unblock(self, address: str) -> Any:
        return self.client.request("DELETE", f"/v1/blocks/{address}")

    def evaluate(self, body: dict[str, Any]) -> Any:
        status, answer = self.client.request("POST", "/v1/evaluate", body)
        assert status == 200, answer
        return answer


@contextmanager
def served(
    workdir: Path, policy: str, limits: ControlLimits | None = None, **server: Any
) -> Iterator[Served]:
    # the middleware and the test's admin client run in this process: its uid has their roles
    # (read, report; admin for blocks) whether the suite runs as root or unprivileged
    me = RoleMembers(uids=frozenset({os.getuid()}), gids=frozenset())
    roles = Authorizer({"read": me, "report": me, "admin": me})
    fake = fake_daemon(workdir, policy, authorizer=roles)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sock = workdir / "control.sock"
    api = Api(fake.services, fake.services.authorizer, limits=limits)
    control = ControlServer(sock, api, gate=api, **server)

    async def start() -> asyncio.Task[None]:
        task = loop.create_task(fake.services.writer.run())
        await fake.services.generations.cold_start()
        await control.start()
        return task

    writer = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Served(fake, api, loop, sock)
    finally:

        async def stop() -> None:
            await control.close()
            writer.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        fake.services.ports.store.close()
