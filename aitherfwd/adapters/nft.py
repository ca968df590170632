"""The only importer of the `nftables` binding (libnftables' JSON API) — layer L2.

Owns: one long-lived libnftables context, running a JSON batch as one kernel transaction,
terse listing of our table, and translating failures into `ApplyError` /
`KernelUnavailableError`. Never runs the `nft` program and never builds rule text (the one
text command it sends, a conntrack timeout object, is rendered by nft/idle.py from integers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aitherfwd.adapters import memory, nftcounters, nftgen, nftrules
from aitherfwd.compiler import Ruleset
from aitherfwd.errors import ApplyError, KernelUnavailableError
from aitherfwd.nft import builders as b
from aitherfwd.nft import idle
from aitherfwd.nft import names as n
from aitherfwd.reconcile import Observed, transaction

log = logging.getLogger(__name__)

Json = dict[str, Any]


class Nft:
    """A libnftables context in the caller's network namespace."""

    def __init__(self) -> None:
        try:
            import nftables  # noqa: PLC0415  (imported here so pure modules never load it)
        except ImportError as exc:
            raise KernelUnavailableError(
                "the nftables Python binding is not installed (pip-nftables / python3-nftables)"
            ) from exc
        try:
            self._ctx = nftables.Nftables()
        except OSError as exc:
            raise KernelUnavailableError(f"cannot load libnftables: {exc}") from exc
        self._ctx.set_json_output(True)
        self._ctx.set_handle_output(False)
        # told of every transaction that changes something: (accepted, seconds, elements)
        self.observer: Callable[[bool, float, int], None] | None = None

    def run(self, commands: list[Json]) -> list[Json]:
        """Run commands as ONE transaction: all of it is applied or none of it."""
        if not commands:
            return []
        if any(idle.is_add(c) for c in commands):
            commands = self._timeouts_first(commands)
        started = time.perf_counter()
        rc, output, error = self._ctx.json_cmd(b.batch(commands))
        elements = _elements(commands)
        if self.observer is not None and any("list" not in c for c in commands):
            self.observer(rc == 0, time.perf_counter() - started, elements)
        if elements >= memory.LARGE_BATCH:
            memory.trim()
        if rc != 0:
            raise ApplyError(_first_errors(error))
        if isinstance(output, dict):
            items: list[Json] = output.get("nftables", [])
            return items
        return []

    def _timeouts_first(self, commands: list[Json]) -> list[Json]:
        """Create the conntrack timeout objects (nft/idle.py) before the batch, as text:
        libnftables 1.0.6 drops their policy when it reads them as JSON. Adding an object
        that exists is a no-op, and one left unused by a refused batch is harmless."""
        rc, _, error = self._ctx.json_cmd(b.batch([b.table()]))
        for c in (c for c in commands if idle.is_add(c)):
            if rc == 0:
                rc, _, error = self._ctx.cmd(idle.add_text(c))
        if rc != 0:
            raise ApplyError(_first_errors(error))
        return [c for c in commands if not idle.is_add(c)]

    def list_table(self, *, terse: bool = True) -> list[Json]:
        """Our table's objects; [] when it does not exist. Terse leaves set elements out."""
        self._ctx.set_terse_output(terse)
        try:
            rc, output, _ = self._ctx.json_cmd(
                b.batch([{"list": {"table": {"family": n.FAMILY, "name": n.TABLE}}}])
            )
        finally:
            self._ctx.set_terse_output(False)
        if rc != 0 or not isinstance(output, dict):
            return []  # ENOENT: no table yet. Permission problems surface on apply.
        items: list[Json] = output.get("nftables", [])
        return items

    def observe(self) -> Observed:
        """Our table without its elements. Not `list table`: that fills libnftables' cache
        with every set element first (~1.8 s with a 300,000-range country set). Sets, maps
        and chains by libnftables' own cheap listings; counters, ct timeout objects
        (nft/idle.py) and rules by netlink dumps (adapters/nftcounters.py,
        adapters/nftrules.py)."""
        listing: list[Json] = [{"table": {"family": n.FAMILY, "name": n.TABLE}}]
        for kind in ("sets", "maps", "chains"):
            self._ctx.set_terse_output(True)
            try:
                rc, output, _ = self._ctx.json_cmd(
                    b.batch([{"list": {kind: {"family": n.FAMILY, "table": n.TABLE}}}])
                )
            finally:
                self._ctx.set_terse_output(False)
            if rc != 0 or not isinstance(output, dict):
                return Observed(False)  # ENOENT: no table yet
            listing += [item for item in output.get("nftables", []) if _ours(item)]
        try:
            counters, rules = nftcounters.read(), nftrules.read()
            timeouts = nftcounters.object_names(nftcounters.NFT_OBJECT_CT_TIMEOUT)
        except OSError:  # netlink refused: the slow listing says the same
            return Observed.from_listing(self.list_table(terse=True))
        listing += [{"counter": {"name": name}} for name in sorted(counters)]
        listing += [{"ct timeout": {"name": name}} for name in timeouts]
        listing += [{"rule": {"chain": chain, "comment": text}} for chain, text in rules]
        return Observed.from_listing(listing)

    def apply(self, ruleset: Ruleset) -> Observed:
        """Replace the static part of our table with `ruleset` in one transaction, keeping
        every element of the dynamic sets. Returns what was there before."""
        before = self.observe()
        self.run(transaction(ruleset, before))
        log.info("ruleset applied sha256=%s objects=%d", ruleset.sha256[:12], len(ruleset.objects))
        return before

    def delete_table(self) -> bool:
        """Remove our table (the explicit 'remove the firewall' command). False if absent."""
        if not self.observe().exists:
            return False
        self.run([{"delete": {"table": {"family": n.FAMILY, "name": n.TABLE}}}])
        return True

    def set_elements(self, set_name: str) -> list[Any]:
        """Elements of one set (with timeout/expires). Expensive for big sets: tests and
        tools only, never a hot path."""
        items = self.run(
            [{"list": {"set": {"family": n.FAMILY, "table": n.TABLE, "name": set_name}}}]
        )
        for item in items:
            if "set" in item:
                elems: list[Any] = item["set"].get("elem", [])
                return elems
        return []

    def counters(self) -> dict[str, tuple[int, int]]:
        """Named counters of our table: name -> (packets, bytes)."""
        items = self.run([{"list": {"counters": {"family": n.FAMILY, "table": n.TABLE}}}])
        return {
            c["counter"]["name"]: (c["counter"]["packets"], c["counter"]["bytes"])
            for c in items
            if "counter" in c and c["counter"].get("table") == n.TABLE
        }

    def generation(self) -> int | None:
        """The namespace's nftables generation (adapters/nftgen.py), None if unreadable."""
        try:
            return nftgen.current()
        except OSError:
            return None

    def add_elements(self, set_name: str, elements: list[Any]) -> None:
        self.run([b.add(b.element(set_name, elements))])


def _first_errors(error: str) -> str:
    """libnftables' error text, deduplicated and trimmed to what a person needs to read."""
    lines: list[str] = []
    for line in error.splitlines():
        text = line.strip()
        if text and text not in lines and not text.startswith("^"):
            lines.append(text.removeprefix("internal:0:0-0: "))
    return "; ".join(lines[:5]) or "libnftables reported an error without a message"


def _elements(commands: list[Json]) -> int:
    """Set elements carried by element commands (add/delete/create of `element`)."""
    return sum(len(ec.elements) for c in commands if (ec := b.element_command(c)))


def _ours(item: Json) -> bool:
    """A listed object of our table (not `metainfo`, not another table's chain)."""
    body = next(iter(item.values()), None) if isinstance(item, dict) else None
    return isinstance(body, dict) and body.get("table") == n.TABLE
