"""An in-memory fleet bus for tests: `FakeJetStream` (one server) and `FakeBus` (one host's
connection to it), implementing the `Bus` port of daemon/ports.py.

Owns: the two streams as JetStream keeps them here — decisions, the last message per
subject; threat events, all of them — durable consumers as an acknowledged sequence per
host (a new decisions consumer starts from the current last-per-subject messages, a new
threats consumer from now), the publisher-side dedupe by message id, and `up`, the switch a
test turns off to make a partition. Re-exported by aitherfwd/testing.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aitherfwd.fleet.messages import BusError, Delivery


class FakeJetStream:
    def __init__(self) -> None:
        self.up = True
        self.seq = 0
        self.decisions: dict[str, tuple[int, bytes, str]] = {}  # subject -> its last message
        self.threats: list[tuple[int, bytes, str]] = []
        self.ids: set[str] = set()
        self.acked: dict[tuple[str, str], int] = {}  # (durable, consumer) -> ack floor
        self.published = 0
        self.policy: tuple[int, bytes] | None = None  # the KV bucket's one key

    def check(self) -> None:
        if not self.up:
            raise BusError("fake bus is down")

    def publish(self, subject: str, data: bytes, msg_id: str) -> None:
        self.check()
        if msg_id in self.ids:
            return
        self.ids.add(msg_id)
        self.seq += 1
        self.published += 1
        if ".d." in subject:
            self.decisions[subject] = (self.seq, data, subject)
        else:
            self.threats.append((self.seq, data, subject))

    def fetch(self, durable: str, consumer: str, batch: int) -> list[Delivery]:
        self.check()
        key = (durable, consumer)
        if key not in self.acked:  # new: decisions from the live ones, threats from now
            self.acked[key] = 0 if consumer == "decisions" else self.seq
        floor = self.acked[key]
        pool = self.decisions.values() if consumer == "decisions" else self.threats
        waiting = sorted(item for item in pool if item[0] > floor)
        out = []
        for i, (seq, data, subject) in enumerate(waiting[:batch]):
            out.append(Delivery(data, len(waiting) - i - 1, self._acker(key, seq), subject, seq))
        return out

    def _acker(self, key: tuple[str, str], seq: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            self.acked[key] = max(self.acked[key], seq)

        return ack


class FakeBus:
    """One host's connection to a `FakeJetStream`."""

    def __init__(self, server: FakeJetStream, host: str) -> None:
        self.server_state, self.host = server, host
        self.server = "fake://jetstream"
        self._connected = False
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._connected and self.server_state.up

    async def connect(self) -> None:
        self.server_state.check()
        self._connected = True
        self.connects += 1

    async def publish(self, messages: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        out = []
        for subject, data, msg_id in messages:
            try:
                self.server_state.publish(subject, data, msg_id)
                out.append(True)
            except BusError:
                out.append(False)
        return out

    async def fetch(self, consumer: str, batch: int, timeout: float) -> list[Delivery]:
        return self.server_state.fetch(self.host, consumer, batch)

    async def put_policy(self, data: bytes) -> int:
        self.server_state.check()
        self.server_state.seq += 1
        self.server_state.policy = (self.server_state.seq, data)
        return self.server_state.seq

    async def get_policy(self) -> tuple[int, bytes] | None:
        self.server_state.check()
        return self.server_state.policy

    async def close(self) -> None:
        self._connected = False
