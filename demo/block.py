"""Add one address to block_v4 with a timeout, in the current namespace (demo helper).

The daemon's control socket does this in a later release; until then the demo uses the
same kernel adapter directly: `python -m demo.block ADDRESS SECONDS`.
"""

from __future__ import annotations

import ipaddress
import sys

from aitherfwd.adapters.nft import Nft
from aitherfwd.nft import builders as b

if __name__ == "__main__":
    address = str(ipaddress.IPv4Address(sys.argv[1]))
    Nft().add_elements("block_v4", [b.timed(address, int(sys.argv[2]))])
