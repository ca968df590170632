"""`GET /v1/watch` on a real control socket (the daemon's API on fakes) and the middleware's
follower: snapshot first, then blocks, unblocks and generations as they happen; caps on
streams; a peer that hangs up gives its slot back; the follower keeps the last state while
the daemon is gone and is live again when it is back."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from aitherfwd.asgi.follower import Follower
from aitherfwd.asgi.state import Followed, ProtocolError
from aitherfwd.control.limits import ControlLimits
from aitherfwd.errors import RequestError
from aitherfwd.nft import builders as b
from lab.wait import until
from tests.unit.asgi_harness import Served, served

pytestmark = pytest.mark.timeout(60)

POLICY = """
version: 1
settings: {default_policy: deny}
zones:
  - {name: internal, cidrs: [10.0.0.0/8]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: no_admin, zone: external, path_prefix: /admin, action: deny}
  - {name: web, dest_ports: [8000], protocol: tcp, action: allow}
"""
ip = ipaddress.ip_address


def raw_watch(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    sock.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: aitherfwd\r\n\r\n")
    return sock


def read_lines(sock: socket.socket, until_event: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The head and the JSON lines of a chunked watch answer, up to `until_event`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    events: list[dict[str, Any]] = []
    body = b""
    while True:
        while b"\r\n" in rest:
            size_text, _, tail = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if len(tail) < size + 2:
                break
            body += tail[:size]
            rest = tail[size + 2 :]
        while b"\n" in body:
            line, _, body = body.partition(b"\n")
            events.append(json.loads(line))
            if events[-1]["event"] == until_event:
                return head, events
        rest += sock.recv(65536)


def follow(d: Served) -> tuple[Followed, Follower]:
    state = Followed([], [], [])
    follower = Follower(d.socket, state, d.fake.clock.now)
    follower.start()
    until(lambda: state.live, 5, "state.live")
    return state, follower


def test_watch_sends_the_policy_and_the_live_blocks_first(tmp_path: Path) -> None:
    with served(tmp_path, POLICY) as d:
        d.block("198.51.100.7", ttl=900)
        d.block("2001:db8::/64")
        sock = raw_watch(d.socket)
        head, events = read_lines(sock, "ready")
        sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"application/x-ndjson" in head and b"chunked" in head.lower()
    policy, blocks, ready = events
    assert policy["event"] == "policy" and policy["generation"] == 1
    assert [r["name"] for r in policy["policy"]["rules"]] == ["no_admin", "web"]
    assert policy["policy"]["rules"][0]["path_prefix"] == "/admin"
    assert sorted(b["address"] for b in blocks["blocks"]) == ["198.51.100.7", "2001:db8::/64"]
    assert ready == {"event": "ready", "blocks": 2}


def test_blocks_unblocks_and_reloads_reach_the_follower_at_once(tmp_path: Path) -> None:
    with served(tmp_path, POLICY) as d:
        state, follower = follow(d)
        try:
            now = d.fake.clock.now()
            started = time.monotonic()
            d.block("203.0.113.9", ttl=600)
            until(
                lambda: state.lookup(ip("203.0.113.9"), now) is not None,
                5,
                "state.lookup(ip('203.0.113.9'), now) is not None",
            )
            assert time.monotonic() - started < 0.5  # the socket round trip included
            d.block("192.0.2.0/24")
            until(
                lambda: state.lookup(ip("192.0.2.77"), now) is not None,
                5,
                "state.lookup(ip('192.0.2.77'), now) is not None",
            )
            d.unblock("203.0.113.9")
            until(
                lambda: state.lookup(ip("203.0.113.9"), now) is None,
                5,
                "state.lookup(ip('203.0.113.9'), now) is None",
            )
            d.fake.policy_path.write_text(POLICY.replace("8000", "8001"))
            d.call(lambda: d.fake.services.generations.reload(trigger="test"))
            until(
                lambda: state.view is not None and state.view.generation == 2,
                5,
                "state.view is not None and state.view.generation == 2",
            )
            assert state.stats()["generation"] == 2
        finally:
            follower.stop()


def test_a_block_another_tool_put_in_the_kernel_reaches_the_follower(tmp_path: Path) -> None:
    with served(tmp_path, POLICY) as d:
        state, follower = follow(d)
        try:
            d.fake.kernel.run([b.add(b.element("block_v4", ["198.51.100.77"]))])
            d.call(d.fake.services.generations.check_drift)  # adopts it, in the writer
            now = d.fake.clock.now()
            until(lambda: state.lookup(ip("198.51.100.77"), now) is not None, 5, "adopted")
        finally:
            follower.stop()


def test_a_block_expires_in_the_follower_without_a_message(tmp_path: Path) -> None:
    with served(tmp_path, POLICY) as d:
        state, follower = follow(d)
        try:
            d.block("203.0.113.9", ttl=60)
            now = d.fake.clock.now()
            until(
                lambda: state.lookup(ip("203.0.113.9"), now) is not None,
                5,
                "state.lookup(ip('203.0.113.9'), now) is not None",
            )
            assert state.lookup(ip("203.0.113.9"), now + 61) is None
        finally:
            follower.stop()


def test_the_follower_keeps_the_last_state_while_the_daemon_is_gone(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with served(tmp_path / "a", POLICY) as d:
        state, follower = follow(d)
        d.block("203.0.113.9")
        until(lambda: state.blocks() == 1, 5, "state.blocks() == 1")
    try:  # the daemon is gone: same view, same blocks, not live
        until(lambda: not state.live, 5, "not state.live")
        assert state.view is not None and state.blocks() == 1
        assert state.stats()["daemon_lost"] == 1
        (tmp_path / "b").mkdir()
        with served(tmp_path / "b", POLICY.replace("8000", "9000")) as d2:
            # a daemon at the same path again? the follower follows the path it was given
            follower.socket_path = d2.socket
            until(lambda: state.live, 10, "state.live")
            assert state.blocks() == 0  # the new daemon's snapshot replaced the old blocks
    finally:
        follower.stop()


def test_streams_are_capped_in_total(tmp_path: Path) -> None:
    limits = ControlLimits(watchers=2)
    with served(tmp_path, POLICY, limits) as d:
        a, b = raw_watch(d.socket), raw_watch(d.socket)
        read_lines(a, "ready")
        read_lines(b, "ready")
        status, answer = d.client.request("GET", "/v1/watch")
        assert status == 429 and answer["error"]["code"] == "E-WATCH-LIMIT"
        a.close()  # a peer that hangs up gives its slot back at once
        until(
            lambda: d.api._watch is not None and len(d.api._watch.watchers) == 1,
            5,
            "d.api._watch is not None and len(d.api._watch.watchers) == 1",
        )
        c = raw_watch(d.socket)
        read_lines(c, "ready")
        b.close()
        c.close()


def test_streams_are_capped_per_non_admin_uid(tmp_path: Path) -> None:
    with served(tmp_path, POLICY) as d:
        hub = d.call(_open_hub(d))
        for _ in range(4):
            hub.open(1000, admin=False)
        with pytest.raises(RequestError) as err:
            hub.open(1000, admin=False)
        assert err.value.code == "E-WATCH-LIMIT"
        hub.open(1001, admin=False)
        hub.open(1000, admin=True)


def _open_hub(d: Served) -> Any:
    async def body() -> Any:
        from aitherfwd.daemon.watch import WatchHub  # noqa: PLC0415

        return WatchHub(d.fake.services)

    return body


def test_a_watcher_that_falls_behind_is_cut_off_with_an_overflow(tmp_path: Path) -> None:
    from aitherfwd.daemon import watch  # noqa: PLC0415

    with served(tmp_path, POLICY) as d:
        hub = d.call(_open_hub(d))
        w = hub.open(0, admin=True)
        big = "x" * (watch.QUEUE_BYTES // 4)
        for i in range(3):
            hub.publish({"event": "heartbeat", "time": i, "pad": big})
        assert not w.overflowed and w.queued > watch.QUEUE_BYTES // 2
        hub.publish({"event": "heartbeat", "time": 4, "pad": big})
        hub.publish({"event": "heartbeat", "time": 5, "pad": big})
        assert w.overflowed and not w.pending and w.queued == 0


@pytest.mark.parametrize(
    "line",
    [
        [],
        {"event": 3},
        {"event": "policy", "generation": "1", "policy": {}},
        {"event": "policy", "generation": 1, "policy": {"version": 1}},
        {"event": "blocks", "blocks": [{"address": "10.0.0.1/8", "expires_at": None}]},
        {"event": "block", "blocks": "all"},
        {"event": "unblock", "addresses": [1]},
        {"event": "ready", "blocks": 0},  # before any policy
        {"event": "overflow"},
    ],
)
def test_a_watch_line_that_does_not_fit_drops_the_stream(line: Any) -> None:
    with pytest.raises(ProtocolError):
        Followed([], [], []).apply(line, 0.0)


def test_unknown_events_are_ignored() -> None:
    Followed([], [], []).apply({"event": "something-new", "x": 1}, 0.0)
