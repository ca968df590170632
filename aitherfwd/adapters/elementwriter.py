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

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from aitherfwd.adapters import netlink as nl
from aitherfwd.adapters import nftelements as ne
from aitherfwd.adapters import nlchannel as nlc
from aitherfwd.adapters.nftshapes import SetShape
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
        self.shapes: dict[str, SetShape] = {}
        self._channel: nlc.Channel | None = None

    # --- shapes ------------------------------------------------------------------------------

    def learn(self, name: str, type_: object, flags: Iterable[str]) -> None:
        shape = SetShape.of(name, type_, flags)
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
            flushed = _flushed_set(command)
            if flushed is not None:
                if flushed not in self.shapes:
                    return False
                continue
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
            flushed = _flushed_set(command)
            if flushed is not None:
                msg = ne.flush_message(self.table, self.shapes[flushed])
                batch.add(msg.kind, msg.attrs, family=nl.NFPROTO_INET, flags=msg.flags)
                continue
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

    def timeout_of(self, set_name: str, value: str) -> int | None:
        """The timeout (ms) of one element of a hash set, as the kernel holds it; None when
        the element is not there. One NFT_MSG_GETSETELEM of that key, not a listing."""
        shape = self.shapes[set_name]
        (msg,) = ne.messages(self.table, shape, "delete", [value])  # the same key attributes
        channel = self._open()
        request = nl.message(
            nl.nfnl_type(nl.NFNL_SUBSYS_NFTABLES, ne.NFT_MSG_GETSETELEM),
            nl.NLM_F_REQUEST | nl.NLM_F_ACK,
            channel.next_seq(),
            msg.attrs,
            family=nl.NFPROTO_INET,
        )
        try:
            replies = channel.request(request, "get set element")
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        for reply in replies:
            for kind, payload in reply.attrs():
                if kind == ne.NFTA_SET_ELEM_LIST_ELEMENTS:
                    for _, elem in nl.attributes(payload):
                        attrs = dict(nl.attributes(elem))
                        if ne.NFTA_SET_ELEM_TIMEOUT in attrs:
                            return nl.u64(attrs[ne.NFTA_SET_ELEM_TIMEOUT])
                        return 0
        return None

    def updates_timeouts(self, set_name: str, probe: str = "255.255.255.255") -> bool:
        """Does an `add` of an element that exists update its timeout (Linux 6.10 and
        later)? Asked once with a key no packet carries as its source (the limited
        broadcast address), added with 1 s, re-added with 600 s, read back, removed."""
        if self.shapes.get(set_name) is None or self.timeout_of(set_name, probe) is not None:
            return False  # unknown set, or the probe key is in use: assume not
        short = {"elem": {"val": probe, "timeout": 1}}
        long_ = {"elem": {"val": probe, "timeout": 600}}
        try:
            self.run([b.add(b.element(set_name, [short]))])
            self.run([b.add(b.element(set_name, [long_]))])
            timeout = self.timeout_of(set_name, probe)
        finally:
            with contextlib.suppress(ApplyError):
                self.run([{"delete": b.element(set_name, [probe])}])
        return timeout is not None and timeout > 1000

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


def _flushed_set(command: Json) -> str | None:
    """The set a `{"flush": {"set": …}}` of our table empties, else None."""
    body = command.get("flush")
    s = body.get("set") if isinstance(body, dict) else None
    if isinstance(s, dict) and s.get("table", n.TABLE) == n.TABLE and "name" in s:
        return str(s["name"])
    return None


def _strerror(code: int) -> str:
    return os.strerror(code)
