"""Names of the kernel objects aitherfwd owns (layer L1, pure).

Owns: the table, the dynamic sets other components write into, chain and counter naming.
Every tool finds all blocks by the name prefix `block_v4` / `block_v6`.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILY = "inet"
TABLE = "aitherfwd"

INPUT_CHAIN = "input"
FINAL_CHAIN = "final"  # the default verdict, its log and its counter
NOZONE_CHAIN = "nozone"  # sources that belong to no zone
# Never traversed: its rule comments record content hashes. Not "meta", an nft keyword that
# would make `nft list ruleset` output impossible to load back.
META_CHAIN = "hashes"  # the ruleset's and the policy's hash (they change with every reload)
SET_HASH_CHAIN = "set_hashes"  # the same, per static set and map (they rarely change)

ZONE_MAP_V4 = "zone_v4"
ZONE_MAP_V6 = "zone_v6"

DEFAULT_COUNTER = "default"
BLOCKED_COUNTER = "blocked"
INVALID_COUNTER = "invalid"

LOG_GROUP = 77  # NFLOG group of `log: true` rules and `log_denied` (for ulogd and the like)
LOG_RATE_PER_SECOND = 10
LOG_BURST = 20

# Detection (dynamic/detect.py reads it through adapters/nflog.py): every denied new
# connection, connection-limit refusal and SYN-flood drop, bounded in the kernel by one
# token bucket per kind so a flood cannot turn into a flood of log messages.
DETECT_GROUP = 78
DETECT_LOG_RATE = 2000  # messages per second per kind, burst the same
CONNLIMIT_CHAIN = "connlimit"  # refusals beyond settings.max_connections_per_ip
SYNFLOOD_CHAIN = "synflood"  # SYNs beyond settings.syn_flood_threshold per second
CONNLIMIT_COUNTER = "connlimit"
SYNFLOOD_COUNTER = "synflood"
DETECT_PREFIX = "afwd"  # NFLOG prefix "afwd <kind> <rule>"; kinds below
KIND_DENIED = "denied"
KIND_CONNLIMIT = "connlimit"
KIND_SYNFLOOD = "synflood"
KIND_EGRESS = "egress"  # an outbound packet a rule of the output chain refused
KIND_ALLOWED = "allowed"  # a new connection an allow rule let in (settings.log_allowed)


@dataclass(frozen=True, slots=True)
class DynamicSet:
    """A set whose elements outlive every apply: blocks and sandbox grants."""

    name: str
    type: str  # ipv4_addr | ipv6_addr
    interval: bool  # prefixes: `flags interval`; single addresses: a hash set

    @property
    def flags(self) -> list[str]:
        return ["interval", "timeout"] if self.interval else ["timeout"]


def _pairs(prefix: str) -> tuple[DynamicSet, ...]:
    return (
        DynamicSet(f"{prefix}_v4", "ipv4_addr", False),
        DynamicSet(f"{prefix}_v6", "ipv6_addr", False),
        DynamicSet(f"{prefix}_v4_net", "ipv4_addr", True),
        DynamicSet(f"{prefix}_v6_net", "ipv6_addr", True),
    )


BLOCK_SETS = _pairs("block")
SANDBOX_SETS = _pairs("sandbox")
DYNAMIC_SETS = BLOCK_SETS + SANDBOX_SETS
DYNAMIC_SET_NAMES = frozenset(s.name for s in DYNAMIC_SETS)


def zone_chain(zone: str) -> str:
    return f"zone_{zone}"


RULE_CHAIN_PREFIX = "r_"
SHARED_SET_PREFIX = "s_"


def rule_chain(rule: str) -> str:
    """The chain holding one policy rule's kernel rules; zone chains jump to it."""
    return f"{RULE_CHAIN_PREFIX}{rule}"


def shared_set(kind: str, digest: str) -> str:
    """A set named by its contents (nft/shared.py): `s_<kind>_<16 hex digits of the hash>`."""
    return f"{SHARED_SET_PREFIX}{kind}_{digest[:16]}"


def is_shared_set(name: str) -> bool:
    return name.startswith(SHARED_SET_PREFIX)


def rule_counter(rule: str) -> str:
    return f"rule_{rule}"


def ratelimit_counter(rule: str) -> str:
    return f"ratelimit_{rule}"


def ratelimit_set(rule: str, family: int, rate: int, burst: int) -> str:
    """The per-source meter; its rate is part of the name, because a kernel element keeps the
    limit it was created with: a changed rate must start a fresh set, not inherit old buckets."""
    return f"rl_{rule}_v{family}_{rate}r{burst}"


def detect_prefix(kind: str, rule: str = "-") -> str:
    """The NFLOG prefix of a detection message: the kind and the policy rule behind it."""
    return f"{DETECT_PREFIX} {kind} {rule}"


def connlimit_set(family: int, limit: int) -> str:
    """Per-source `ct count` meter; named with its limit so a changed limit starts fresh."""
    return f"connlimit_v{family}_{limit}"


def synrate_set(family: int, rate: int) -> str:
    """Per-source SYN `limit rate` meter; named with its rate for the same reason."""
    return f"synrate_v{family}_{rate}"


# The forward path (nft/forward.py): routed traffic to and from container zones.
FORWARD_CHAIN = "forward"  # hook forward, FORWARD_PRIORITY
FORWARD_PRIORITY = -10  # before Docker's iptables-nft FORWARD (filter, 0); after DNAT (-100)
FWD_IN_CHAIN = "fwd_in"  # inbound to containers: limits, then the source's zone
FWD_OUT_CHAIN = "fwd_out"  # outbound from containers: the egress rules
FWD_NOZONE_CHAIN = "fnozone"
FWD_FINAL_CHAIN = "ffinal"  # the default verdict of inbound to containers (nft/fwdlog.py)
FWD_SYNFLOOD_CHAIN = "fsynflood"  # the kernel limits' refusals there, reporting the
FWD_CONNLIMIT_CHAIN = "fconnlimit"  # published port
FWD_ZONE_MAP_V4 = "fzone_v4"
FWD_ZONE_MAP_V6 = "fzone_v6"
FWD_RULE_CHAIN_PREFIX = "f_"


def fwd_zone_chain(zone: str) -> str:
    return f"fzone_{zone}"


def fwd_rule_chain(rule: str) -> str:
    """A rule's kernel rules on the forward path: ports are the published ones."""
    return f"{FWD_RULE_CHAIN_PREFIX}{rule}"
