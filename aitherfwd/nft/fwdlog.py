"""What the forward path reports to the daemon, with the port the client asked for
(layer L1, pure).

Owns: the detection logs (NFLOG group `DETECT_GROUP`, prefix `afwd <kind> <rule>`) of
inbound-to-containers traffic — a rule's denial, a `log_allowed` accept, a refusal of the
kernel limits — and the forward path's chains that end what no rule decided (`ffinal`)
and what the per-source limits refuse (`fsynflood`, `fconnlimit`), like `final`,
`synflood` and `connlimit` do on the input path.

Why not the input path's logs: after DNAT a packet to a published port carries the
container's port (host port 8080 → container port 80), and NFLOG copies the packet as it is.
The daemon must see the published port: decision records name it, and scan detection counts
distinct ports (8080..8090 all mapped to container port 80 are eleven ports, not one). This
kernel cannot attach conntrack to NFLOG messages (`CONFIG_NETFILTER_NETLINK_GLUE_CT` is
optional), and nftables refuses to copy a port into the packet mark (a type mismatch). So
the log statement is wrapped, inside ONE rule, in two writes of the transport header's
destination port, which carry no checksum update (`th dport`: csum_type 0):

    … ct state new limit … th dport set ct original proto-dst log … th dport set ct reply proto-src

`ct original proto-dst` is the published port; `ct reply proto-src` is the port DNAT chose,
i.e. the packet's own port before the first write, so the packet leaves the rule byte for
byte as it came (the limit comes first: past it, the rule stops before any write). Only
transport protocols with ports at that offset (tcp, udp, sctp, udplite) are rewritten; any
other is logged as it is. Must not import the compiler.
"""

from __future__ import annotations

from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.nft.verdicts import log_exprs, verdicts
from aitherfwd.policy.model import Action, Protocol, Settings

Json = b.Json
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")  # destination port at offset 2


def published_log(kind: str, rule: str) -> list[Json]:
    """The bounded detection log, with the packet's port swapped for the published one
    around it (and back)."""
    dport = b.payload("th", "dport")
    return [
        b.limit(n.DETECT_LOG_RATE, "second", n.DETECT_LOG_RATE),
        b.mangle(dport, b.ct_original("proto-dst")),
        b.log(n.detect_prefix(kind, rule), n.DETECT_GROUP),
        b.mangle(dport, b.ct_reply("proto-src")),
    ]


def detect_exprs(
    matches: list[Json], kind: str, rule: str, proto: Protocol | None
) -> list[list[Json]]:
    """The expressions of the rules that report a new connection of `matches` as `kind`
    (denied or allowed) for `rule`. `proto`: tcp or udp when the matches already fix it;
    None: any protocol (then the protocols without ports get a plain log of their own)."""
    new = b.match(b.ct("state"), ["new"], "in")
    if proto in (Protocol.TCP, Protocol.UDP):
        return [[*matches, new, *published_log(kind, rule)]]
    # anonymous: nft infers the transport protocol for `ct original proto-dst` from an
    # anonymous set of protocols, not from a named one
    protos = b.anon_set(list(PORT_PROTOCOLS))
    l4 = b.meta("l4proto")
    plain = [b.limit(n.DETECT_LOG_RATE, "second", n.DETECT_LOG_RATE)]
    plain.append(b.log(n.detect_prefix(kind, rule), n.DETECT_GROUP))
    return [
        [*matches, b.match(l4, protos), new, *published_log(kind, rule)],
        [*matches, b.match(l4, protos, "!="), new, *plain],
    ]


def final_chain(st: Settings) -> list[tuple[list[Json], str]]:
    """`ffinal`: inbound to containers that no rule decided — `final`'s rules (the same
    `default` counter and verdict) with the published port in its detection log. Each
    rule's expressions with its label (the caller comments them)."""
    action = st.default_policy
    out: list[tuple[list[Json], str]] = []
    if st.log_denied and action is not Action.ALLOW:
        out.append((log_exprs(f"afw {action} default ", n.LOG_GROUP), "default:log"))
    if action is not Action.ALLOW:
        detect = detect_exprs([], n.KIND_DENIED, "default", None)
        out += [(e, "default:detect") for e in detect]
    counter = b.named_counter(n.DEFAULT_COUNTER)
    out += [([counter, *v], "default") for v in verdicts(action, None)]
    return out


def limit_chains() -> list[tuple[str, list[Json], str]]:
    """`fsynflood` and `fconnlimit`: the input path's `synflood` and `connlimit` chains
    (same counters, same verdicts) for fwd_in's meters, reporting the published port.
    Each rule as (chain, expressions, label)."""
    syn, conn = n.FWD_SYNFLOOD_CHAIN, n.FWD_CONNLIMIT_CHAIN
    tcp = b.match(b.meta("l4proto"), "tcp")
    out = [(syn, [tcp, *published_log(n.KIND_SYNFLOOD, "-")], "synflood:log")]
    out.append((syn, [b.named_counter(n.SYNFLOOD_COUNTER), b.drop()], "synflood:drop"))
    out += [(conn, e, "connlimit:log") for e in detect_exprs([], n.KIND_CONNLIMIT, "-", None)]
    for v in verdicts(Action.REJECT, None):
        out.append(
            (conn, [*v[:-1], b.named_counter(n.CONNLIMIT_COUNTER), v[-1]], "connlimit:reject")
        )
    return out
