"""The `notify:` policy section and the notifier's promise never to wait: a full queue
drops (and counts) instead of blocking the caller."""

from __future__ import annotations

import asyncio

from aitherfwd.adapters.notify import Notifier
from aitherfwd.policy.model import NotifySettings, Webhook
from tests.unit.helpers import codes, ok


def test_webhooks_parse_with_default_events() -> None:
    policy = ok(
        """
        notify:
          webhooks:
            - url: http://127.0.0.1:8099/sentry/threats
            - {url: "https://sentry.internal/x", events: [block, permanent, unblock], timeout: 2}
          queue: 10
        """
    )
    first, second = policy.notify.webhooks
    assert first.events == frozenset({"block", "permanent"})
    assert second.events == frozenset({"block", "permanent", "unblock"})
    assert second.timeout == 2.0
    assert policy.notify.queue == 10


def test_bad_webhooks_are_located_errors() -> None:
    found = codes(
        """
        notify:
          webhooks:
            - url: ftp://example.org/x
            - {url: "http://127.0.0.1:1/", events: [blok]}
            - {events: [block]}
        """
    )
    assert {"E-URL", "E-ENUM", "E-MISSING-KEY"} <= set(found)


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    hook = Webhook("http://127.0.0.1:9/refused", timeout=1.0)

    async def scenario() -> Notifier:
        notifier = Notifier(NotifySettings((hook,), queue=2, retries=0))
        for i in range(10):
            notifier.send("block", {"n": i})  # returns at once, every time
        notifier.send("unblock", {"n": "not subscribed"})
        for _ in range(200):
            if notifier.stats.failed + notifier.stats.sent >= 2:
                break
            await asyncio.sleep(0.01)
        await notifier.close()
        return notifier

    notifier = asyncio.run(scenario())
    # the worker takes the first one at once, so up to 3 can be waiting or in flight
    assert notifier.stats.dropped >= 7
    assert notifier.stats.dropped + notifier.stats.failed + notifier.stats.sent <= 10
