"""`TimedNft`: the product's `Nft`, with its two kernel steps timed from the inside.

Owns: splitting `Nft.apply` into its `observe` listing and its `run` transaction within the
very same call, by overriding those two methods in a subclass (the product code is not
edited). Each call leaves its duration in `last`; nothing else changes.
"""

from __future__ import annotations

import time
from typing import Any

from aitherfwd.adapters.nft import Json, Nft
from aitherfwd.reconcile import Observed


class TimedNft(Nft):
    """An `Nft` that remembers how long its last `observe` and `run` took (ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {"observe": 0.0, "run": 0.0}

    def observe(self) -> Observed:
        start = time.perf_counter_ns()
        try:
            return super().observe()
        finally:
            self.last["observe"] = (time.perf_counter_ns() - start) / 1e6

    def run(self, commands: list[Json]) -> list[Any]:
        start = time.perf_counter_ns()
        try:
            return super().run(commands)
        finally:
            self.last["run"] = (time.perf_counter_ns() - start) / 1e6
