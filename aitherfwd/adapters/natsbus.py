"""The fleet's bus on NATS JetStream (layer L2): the only importer of nats-py.

Owns: the connection (nats-py reconnects by itself once connected; a first connect that
fails raises BusError and the fleet service tries again), the fleet's two streams — the
decisions (a subject per origin host and address, keeping only its last message, and a
subject per batch of blocks: fleet/batch.py) and the threat events, kept for an hour —
created when missing, this host's two durable pull consumers, publishing with the
stream's acknowledgement, fetching (with each message's stream sequence and whether it is
a redelivery), and the policy's KV bucket (created when missing; one key). Every nats-py
error becomes a BusError here.

nats-py is an optional dependency (the `fleet` extra): Debian does not package it. Without
it, a `[fleet]` config fails at start with E-FLEET-NO-CLIENT saying what to install.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aitherfwd.fleet import batch as fb
from aitherfwd.fleet import messages as m
from aitherfwd.fleet.messages import BusError, Delivery
from aitherfwd.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

DECISIONS_MAX_MSGS = 1_000_000  # one per (host, address): the fleet's live decisions
THREATS_MAX_AGE = 3600.0  # seconds a shared threat event stays in its stream
ACK_WAIT = 30.0  # seconds before an unacknowledged delivery is sent again
MAX_ACK_PENDING = 20_000
HEADROOM = 1024  # bytes over the largest message we send (its headers: the message id)
POLICY_KEY = "policy"
POLICY_HISTORY = 10  # revisions of the policy the bucket keeps
REQUEST_TIMEOUT = 5.0  # JetStream API requests and publish acknowledgements
NO_CLIENT = (
    "fleet mode needs the NATS client nats-py, which is not installed: "
    "pip install 'aitherfwd[fleet]' (or nats-py==2.16.0) next to aitherfwd, or remove [fleet]"
)


def available() -> bool:
    try:
        import nats  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class NatsBus:
    """Implements the `Bus` port over nats-py."""

    def __init__(self, settings: FleetSettings) -> None:
        self.s = settings
        self._nc: Any = None
        self._subs: dict[str, Any] = {}
        self._kv: Any = None
        self._js: Any = None  # one JetStream context: its async-publish replies are set up once
        self.server = ""  # the server connected to, for status
        self.last_error = ""

    @property
    def connected(self) -> bool:
        wanted = 2 if self.s.shares("threats") else 1  # every durable consumer set up
        return self._nc is not None and bool(self._nc.is_connected) and len(self._subs) == wanted

    async def connect(self) -> None:
        """The first connection is retried by nats-py itself until a server answers
        (max_reconnect_attempts=-1): this waits meanwhile, and `connected` stays False."""
        try:
            import nats  # noqa: PLC0415
            from nats.errors import Error as NatsError  # noqa: PLC0415
        except ImportError:
            raise BusError(NO_CLIENT, code="E-FLEET-NO-CLIENT") from None
        try:
            if self._nc is None:
                self._nc = await nats.connect(**self._options())
            self.server = str(getattr(self._nc, "connected_url", None) or "")
            if self._js is None:
                self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
            await self._setup()
        except (NatsError, OSError, TimeoutError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise BusError(f"cannot reach the fleet bus: {self.last_error}") from exc

    def _options(self) -> dict[str, Any]:
        s = self.s
        opts: dict[str, Any] = {
            "servers": list(s.servers),
            "name": f"aitherfwd-{s.host}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # forever: the host enforces alone meanwhile
            "reconnect_time_wait": 1,
            "connect_timeout": 2,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._error,
        }
        if s.creds is not None:
            opts["user_credentials"] = str(s.creds)
        if s.nkey_seed is not None:
            opts["nkeys_seed"] = str(s.nkey_seed)
        if s.user is not None:
            opts["user"], opts["password"] = s.user, s.password
        if s.tls_ca is not None:
            opts["tls"] = ssl.create_default_context(cafile=str(s.tls_ca))
        return opts

    async def _disconnected(self) -> None:
        log.warning("fleet bus disconnected; enforcing alone until it is back")

    async def _reconnected(self) -> None:
        self.server = str(getattr(self._nc, "connected_url", None) or "")
        log.warning("fleet bus reconnected server=%s", self.server)

    async def _error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.debug("fleet bus error error=%s", self.last_error)

    async def _setup(self) -> None:
        """The streams (created when missing) and this host's durable consumers."""
        from nats.js import api  # noqa: PLC0415
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        s, js = self.s, self._nc.jetstream(timeout=REQUEST_TIMEOUT)
        streams = [
            api.StreamConfig(
                name=m.decisions_stream(s.name),
                subjects=[f"afw.{s.name}.d.>"],
                storage=api.StorageType.FILE,
                max_msgs_per_subject=1,
                max_msgs=DECISIONS_MAX_MSGS,
                max_msg_size=fb.MAX_BATCH_BYTES + HEADROOM,  # the server refuses larger
                discard=api.DiscardPolicy.OLD,
                num_replicas=s.replicas,
            )
        ]
        if s.shares("threats"):
            streams.append(
                api.StreamConfig(
                    name=m.threats_stream(s.name),
                    subjects=[f"afw.{s.name}.t.>"],
                    storage=api.StorageType.FILE,
                    max_age=THREATS_MAX_AGE,
                    max_msg_size=m.MAX_MESSAGE + HEADROOM,
                    discard=api.DiscardPolicy.OLD,
                    num_replicas=s.replicas,
                )
            )
        for config in streams:
            try:
                await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
        # a new host starts from the last decision per (host, address): the live ones
        consumers = {
            "decisions": (
                m.decisions_stream(s.name),
                s.host,
                api.DeliverPolicy.LAST_PER_SUBJECT,
                f"afw.{s.name}.d.>",
            ),
        }
        if s.shares("threats"):
            consumers["threats"] = (
                m.threats_stream(s.name),
                f"{s.host}-t",
                api.DeliverPolicy.NEW,
                f"afw.{s.name}.t.>",
            )
        for which, (stream, durable, deliver, subject) in consumers.items():
            if which in self._subs:
                continue
            consumer = api.ConsumerConfig(
                durable_name=durable,
                deliver_policy=deliver,
                # acknowledging a delivery acknowledges every earlier one: one ack per batch
                ack_policy=api.AckPolicy.ALL,
                ack_wait=ACK_WAIT,
                max_ack_pending=MAX_ACK_PENDING,
            )
            self._subs[which] = await js.pull_subscribe(
                subject, durable=durable, stream=stream, config=consumer
            )

    async def publish(self, messages: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """Pipelined: every message is sent before any acknowledgement is awaited (on one
        JetStream context, whose reply subscription is set up once); acknowledgements not
        in within REQUEST_TIMEOUT count as failed (retried, dropped as duplicates)."""
        from nats.errors import Error as NatsError  # noqa: PLC0415

        if self._js is None:
            raise BusError("not connected to the fleet bus")
        futures: list[asyncio.Future[Any]] = []
        try:
            for subject, data, msg_id in messages:
                futures.append(
                    await self._js.publish_async(
                        subject, data, wait_stall=REQUEST_TIMEOUT, headers={"Nats-Msg-Id": msg_id}
                    )
                )
        except (NatsError, OSError, TimeoutError) as exc:
            self.last_error = f"publish failed: {type(exc).__name__}: {exc}"
        if futures:
            _, pending = await asyncio.wait(futures, timeout=REQUEST_TIMEOUT)
            for f in pending:
                f.cancel()
        acked = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        if not all(acked):
            failed = next(
                (f for f in futures if f.done() and not f.cancelled() and f.exception()), None
            )
            if failed is not None:
                self.last_error = f"publish refused: {failed.exception()}"
        return acked + [False] * (len(messages) - len(futures))

    async def fetch(self, consumer: str, batch: int, timeout: float) -> list[Delivery]:
        from nats.errors import Error as NatsError  # noqa: PLC0415
        from nats.errors import TimeoutError as NatsTimeout  # noqa: PLC0415

        sub = self._subs.get(consumer)
        if sub is None:
            raise BusError(f"no consumer {consumer!r}: not connected yet")
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except (NatsTimeout, TimeoutError):
            return []
        except (NatsError, OSError) as exc:
            # set the consumer up again at the next connect (the server may have lost it)
            self._subs.pop(consumer, None)
            raise BusError(f"fetch failed: {type(exc).__name__}: {exc}") from exc
        return [_delivery(msg) for msg in msgs]

    async def _bucket(self) -> Any:
        """The fleet's policy bucket, created when missing (a few revisions kept)."""
        from nats.js.errors import BucketNotFoundError  # noqa: PLC0415

        if self._kv is None:
            if self._nc is None:
                raise BusError("not connected to the fleet bus")
            js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
            bucket = m.policy_bucket(self.s.name)
            try:
                self._kv = await js.key_value(bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(
                    bucket=bucket, history=POLICY_HISTORY, replicas=self.s.replicas
                )
        return self._kv

    async def put_policy(self, data: bytes) -> int:
        from nats.errors import Error as NatsError  # noqa: PLC0415

        try:
            return int(await (await self._bucket()).put(POLICY_KEY, data))
        except (NatsError, OSError, TimeoutError) as exc:
            raise BusError(f"policy push failed: {type(exc).__name__}: {exc}") from exc

    async def get_policy(self) -> tuple[int, bytes] | None:
        from nats.errors import Error as NatsError  # noqa: PLC0415
        from nats.js.errors import KeyNotFoundError  # noqa: PLC0415

        try:
            entry = await (await self._bucket()).get(POLICY_KEY)
        except KeyNotFoundError:
            return None
        except (NatsError, OSError, TimeoutError) as exc:
            raise BusError(f"policy read failed: {type(exc).__name__}: {exc}") from exc
        return int(entry.revision or 0), bytes(entry.value or b"")

    async def close(self) -> None:
        self._kv = self._js = None
        nc, self._nc, self._subs = self._nc, None, {}
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:
                log.debug("fleet bus close failed error=%s", exc)


def _delivery(msg: Any) -> Delivery:
    try:
        meta = msg.metadata
        pending, seq = int(meta.num_pending), int(meta.sequence.stream)
        again = int(meta.num_delivered) > 1
    except (AttributeError, TypeError, ValueError):
        pending, seq, again = 0, 0, False
    return Delivery(msg.data, pending, msg.ack, msg.subject, seq, again)
