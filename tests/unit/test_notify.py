"""The `notify:` policy section and the notifier's promise never to wait: a full queue
drops (and counts) instead of blocking the caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aitherfwd.adapters.notify import Notifier
from aitherfwd.control.schema import parse_threats
from aitherfwd.errors import RequestError
from aitherfwd.policy.model import NotifySettings, Webhook
from aitherfwd.policy.notify import targets
from aitherfwd.testing import fake_daemon
from tests.unit.helpers import BASE, codes, ok


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


REPORTERS = """
notify:
  webhooks:
    - {url: "http://sentry.internal/sentry/threats", name: sentry}
    - {url: "http://audit.internal/hook"}
reputation: {threshold: 2}
"""


def test_a_block_is_not_echoed_to_the_reporter_whose_event_caused_it(tmp_path: Path) -> None:
    """Sentry reports a threat that blocks: the notification goes to the other webhook,
    not back to Sentry; a block caused by someone else's report goes to both."""
    fake = fake_daemon(tmp_path, BASE + REPORTERS)
    s = fake.services
    body = {"type": "INJECTION", "source_ip": "203.0.113.9", "severity": "high"}
    sentry = parse_threats({**body, "reporter": "sentry"})
    other = parse_threats({**body, "source_ip": "203.0.113.10", "reporter": "guard"})

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(s.writer.run())
        try:
            await s.generations.cold_start()
            await s.reputation.threats(sentry)
            await s.reputation.threats(other)
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        s.ports.store.close()
    settings = s.generations.current().policy.notify
    (first, _), (second, _) = fake.notifier.sent
    sent = [[h.url for h in targets(settings, kind, ev)] for kind, ev in fake.notifier.sent]
    assert fake.notifier.sent[0][1]["reporter"] == "sentry"
    assert (first, second) == ("block", "block")
    assert sent == [
        ["http://audit.internal/hook"],
        ["http://sentry.internal/sentry/threats", "http://audit.internal/hook"],
    ]


def test_a_reporter_must_be_a_plain_name() -> None:
    with pytest.raises(RequestError):
        parse_threats({"type": "X", "source_ip": "203.0.113.9", "reporter": "a b"})
    assert codes("notify: {webhooks: [{url: 'http://x.org/', name: 'bad name'}]}\n") == ["E-NAME"]
