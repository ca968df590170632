"""The `notify:` section of the policy (layer L1, pure).

Owns: parsing outbound notification targets — webhooks that receive a JSON event for each
block the firewall decided on its own — with located diagnostics, and `targets`, which
webhooks an event goes to (never back to the reporter that caused it). Sending is the
notifier adapter's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import urlsplit

from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.fields import Fields
from aitherfwd.policy.model import NOTIFY_EVENTS, NotifySettings, Webhook
from aitherfwd.policy.source import YNode

NOTIFY_KEYS = {"webhooks", "queue", "retries"}
WEBHOOK_KEYS = {"url", "events", "timeout", "name"}


def parse_notify(node: YNode, f: Fields, report: Reporter) -> NotifySettings | None:
    m = f.mapping(node, "notify", NOTIFY_KEYS)
    if m is None:
        return None
    d = NotifySettings()
    queue = f.integer(m["queue"], "notify.queue", 1, 1_000_000) if "queue" in m else d.queue
    retries = f.integer(m["retries"], "notify.retries", 0, 20) if "retries" in m else d.retries
    hooks: list[Webhook] | None = []
    if "webhooks" in m:
        hooks = f.each(m["webhooks"], "notify.webhooks", lambda n, p: _webhook(n, p, f, report))
    if queue is None or retries is None or hooks is None:
        return None
    return NotifySettings(tuple(hooks), queue, retries)


def _webhook(node: YNode, path: str, f: Fields, report: Reporter) -> Webhook | None:
    m = f.mapping(node, path, WEBHOOK_KEYS, frozenset({"url"}))
    if m is None or "url" not in m:
        return None
    url = f.string(m["url"], f"{path}.url")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        report.error(
            "E-URL",
            f"{path}.url",
            f"'{url}' is not an http:// or https:// URL with a host",
            m["url"].pos,
        )
        return None
    events = _events(m["events"], f"{path}.events", f, report) if "events" in m else None
    if "events" in m and events is None:
        return None
    t = f.integer(m["timeout"], f"{path}.timeout", 1, 60) if "timeout" in m else 5
    name = f.name(m["name"], f"{path}.name") if "name" in m else None
    if t is None or ("name" in m and name is None):
        return None
    hook = Webhook(url, timeout=float(t), name=name)
    return replace(hook, events=events) if events is not None else hook


def targets(settings: NotifySettings, kind: str, event: Mapping[str, object]) -> list[Webhook]:
    """The webhooks an event of `kind` goes to: those subscribed to it, except the one
    named like the event's `reporter` — a block is not echoed back to the reporter whose
    threat event caused it."""
    reporter = event.get("reporter")
    return [
        h for h in settings.webhooks if kind in h.events and (h.name is None or h.name != reporter)
    ]


def _events(node: YNode, path: str, f: Fields, report: Reporter) -> frozenset[str] | None:
    names = f.each(node, path, f.string, scalar_ok=True)
    if names is None:
        return None
    for i, name in enumerate(names):
        if name not in NOTIFY_EVENTS:
            report.error(
                "E-ENUM",
                f"{path}[{i}]",
                f"unknown event '{name}': use one of {', '.join(NOTIFY_EVENTS)}",
                node.pos,
            )
            return None
    return frozenset(names)
