"""Whether this host routes packets: the kernel's forwarding switches (layer L2).

Owns: reading `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` from /proc/sys
(of the caller's network namespace) for `aitherfwd check`. A switch that cannot be read
counts as off: the check is advice, never a failure.
"""

from __future__ import annotations

from pathlib import Path

SWITCHES = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


def forwarding_families(root: Path = Path("/proc/sys")) -> list[int]:
    """The IP versions (4, 6) this host forwards, in order."""
    out = []
    for family, rel in SWITCHES.items():
        try:
            if (root / rel).read_text().strip() not in ("", "0"):
                out.append(family)
        except OSError:
            continue
    return out
