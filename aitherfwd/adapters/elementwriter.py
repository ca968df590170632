"""The element writer: set-element commands to the kernel as one nfnetlink batch (layer L2).

Owns: the shapes of our sets (learned from the `add set` commands and the listings that
pass through the kernel adapter), deciding whether a list of commands is element-only and
writable here, one NETLINK_NETFILTER socket with send and receive buffers sized for the
largest batch, and the ack check: every message asks for an ack, a batch the kernel refuses
is applied as a whole or not at all (one nf_tables transaction), and a refusal becomes an
`ApplyError` carrying the kernel's errno text. A batch with no complete answer in time
leaves the socket closed (the next batch opens a new one) and is reported as refused;
drift repair reconciles whatever the kernel did.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nftelements as ne
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n

log = logging.getLogger(__name__)
Json = dict[str, Any]
SO_SNDBUFFORCE = 32
BUFFER = 64 << 20  # a 1,000,000-element restore is sent in 50,000-element batches (~3 MB)
TIMEOUT = 60.0  # seconds for the kernel's answer to one batch


class ElementWriter:
    def __init__(self, table: str = n.TABLE, timeout: float = TIMEOUT) -> None:
        self.table, self.timeout = table, timeout
        self.shapes: dict[str, ne.SetShape] = {}
        self._channel: nlc.Channel | None = None

    # --- shapes ------------------------------------------------------------------------------

    def learn(self, name: str, type_: object, flags: Iterable[str]) -> None:
        shape = ne.SetShape.of(name, type_, flags)
        if shape is None:
            self.shapes.pop(name, None)
        else:
            self.shapes[name] = shape

    def learn_sets(self, sets: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        """From a listing (`Observed.sets`): name -> (type, flags)."""
        self.shapes = {}
        for name, (type_, flags) in sets.items():
            self.learn(name, type_, flags)

    def learn_commands(self, commands: list[Json]) -> None:
        """From the `add set` / `delete set` commands of a transaction that succeeded."""
        for command in commands:
            ((verb, body),) = command.items()
            s = body.get("set") if isinstance(body, dict) else None
            if not isinstance(s, dict) or s.get("table", self.table) != self.table:
                if verb == "delete" and isinstance(body, dict) and "table" in body:
                    self.shapes = {}  # our table went: every shape with it
                continue
            if verb in ("add", "create"):
                self.learn(str(s["name"]), s["type"], s.get("flags", []))
            elif verb == "delete":
                self.shapes.pop(str(s["name"]), None)

    def writable(self, commands: list[Json]) -> bool:
        """Element commands only, each for a set whose shape we know."""
        if not commands:
            return False
        for command in commands:
            ec = b.element_command(command)
            if ec is None or ec.verb not in ("add", "create", "delete"):
                return False
            if ec.set_name not in self.shapes:
                return False
        return True

    # --- writing -----------------------------------------------------------------------------

    def run(self, commands: list[Json]) -> int:
        """Apply element commands as one transaction; the number of messages. Raises
        ApplyError (nothing applied) when the kernel refuses any of it, or ElementError when
        an element cannot be encoded (before anything is sent)."""
        batch = nlc.Batch(1)
        for command in commands:
            ec = b.element_command(command)
            if ec is None:
                raise ne.ElementError(f"not an element command: {command!r:.80}")
            shape = self.shapes[ec.set_name]
            for msg in ne.messages(self.table, shape, ec.verb, ec.elements):
                batch.add(msg.kind, msg.attrs, family=nl.NFPROTO_INET, flags=msg.flags)
        if not len(batch):
            return 0
        channel = self._open()
        try:
            acks = channel.send_batch(batch)
        except OSError as exc:  # no complete answer, or the socket failed: start afresh
            self.close()
            raise ApplyError(f"element batch not acknowledged: {exc}") from exc
        refused = acks.refused()
        if refused:
            seq, code = min(refused.items())
            text = acks.messages.get(seq) or _strerror(code)
            raise ApplyError(f"Could not process rule: {text} ({len(refused)} message(s) refused)")
        return len(batch)

    def _open(self) -> nlc.Channel:
        if self._channel is None:
            channel = nlc.Channel(rcvbuf=1 << 20, timeout=self.timeout)
            try:
                channel.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER)
            except OSError:  # without CAP_NET_ADMIN: the default buffer, smaller batches
                channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            self._channel = channel
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _strerror(code: int) -> str:
    return os.strerror(code)
