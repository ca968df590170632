"""Durations as people write them: `90`, `"30s"`, `"15m"`, `"1h"`, `"7d"`, `"1h30m"` (layer L1).

Owns: parsing and formatting durations. Pure.
"""

from __future__ import annotations

import functools
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+)([smhdw])", re.ASCII)  # other scripts' digits are no duration
MAX_SECONDS = 10 * 365 * 86_400


@functools.lru_cache(maxsize=256)  # bulk requests repeat the same few TTLs
def parse_duration(value: object) -> int:
    """Whole seconds > 0; raises ValueError with a message that says how to write it."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 15m, got a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text.isascii():
            raise ValueError(f"'{value}' is not a duration; write e.g. 30s, 15m, 1h, 7d")
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"'{value}' is not a duration; write e.g. 30s, 15m, 1h, 7d")
            seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration like 15m, got {type(value).__name__}")
    if not 1 <= seconds <= MAX_SECONDS:
        raise ValueError(f"duration {seconds}s is out of range 1s-{MAX_SECONDS // 86_400}d")
    return seconds


def format_duration(seconds: float) -> str:
    s = max(0, int(seconds))
    out = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    if s or not out:
        out.append(f"{s}s")
    return "".join(out)
