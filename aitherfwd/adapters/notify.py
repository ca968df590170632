"""Outbound notifications: JSON events POSTed to webhooks (layer L2).

Owns: a bounded queue and one background worker that delivers each event to the webhooks
subscribed to its kind, with bounded retries and exponential backoff. `send` never waits:
when the queue is full the event is dropped and counted — enforcement never waits for a
slow or dead receiver. HTTP is the standard library's `http.client`, run in a thread:
one short POST per event needs nothing more.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aitherfwd.policy.model import NotifySettings, Webhook
from aitherfwd.policy.notify import targets

log = logging.getLogger(__name__)
BACKOFF_START = 0.5  # seconds before the first retry; doubled each time
BACKOFF_MAX = 8.0


@dataclass
class NotifyStats:
    sent: int = 0
    failed: int = 0  # given up after every retry
    dropped: int = 0  # the queue was full
    retries: int = 0


class DeliveryError(Exception):
    pass


def post(hook: Webhook, body: bytes) -> int:
    """One POST; the status code, or DeliveryError for a network error or a 5xx."""
    parts = urlsplit(hook.url)
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_type(parts.hostname or "", parts.port, timeout=hook.timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(
            "POST",
            path,
            body,
            {"Content-Type": "application/json", "User-Agent": "aitherfwd"},
        )
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(str(exc) or type(exc).__name__) from None
    finally:
        conn.close()
    if status >= 500:  # a server error is worth retrying; a 4xx is not
        raise DeliveryError(f"HTTP {status}")
    return status


class Notifier:
    def __init__(self, settings: NotifySettings | None = None) -> None:
        self.settings = settings or NotifySettings()
        self.stats = NotifyStats()
        self._queue: asyncio.Queue[tuple[Webhook, bytes]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def configure(self, settings: NotifySettings) -> None:
        """New targets from a reloaded policy; queued events keep their old targets."""
        self.settings = settings

    def send(self, kind: str, event: dict[str, Any]) -> None:
        hooks = targets(self.settings, kind, event)
        if not hooks:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self.settings.queue)
        body = json.dumps(event, separators=(",", ":")).encode()
        for hook in hooks:
            try:
                self._queue.put_nowait((hook, body))
            except asyncio.QueueFull:
                self.stats.dropped += 1
                log.warning("notification dropped: queue full url=%s kind=%s", hook.url, kind)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="notify")

    async def _run(self) -> None:
        queue = self._queue
        while queue is not None and not queue.empty():
            hook, body = queue.get_nowait()
            await self._deliver(hook, body)

    async def _deliver(self, hook: Webhook, body: bytes) -> None:
        delay = BACKOFF_START
        for attempt in range(self.settings.retries + 1):
            try:
                status = await asyncio.to_thread(post, hook, body)
            except DeliveryError as exc:
                if attempt == self.settings.retries:
                    self.stats.failed += 1
                    log.error(
                        "notification failed after %d attempts url=%s error=%s",
                        attempt + 1,
                        hook.url,
                        exc,
                    )
                    return
                self.stats.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            else:
                self.stats.sent += 1
                if status >= 400:  # delivered, but the receiver refused it
                    log.warning("notification refused url=%s status=%d", hook.url, status)
                return

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
