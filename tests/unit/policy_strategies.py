"""Hypothesis strategies for random VALID policies, as the dict a YAML file holds.

Owns: zones (IPv4 and IPv6 CIDRs, never wholly shadowed by earlier zones), services, rules
(ports and ranges, services, protocols, source CIDRs, time windows, rate limits, log,
actions, layer-7 fields, applies_to; zones that hold containers), settings, reputation, an
`egress:` section and `sandbox:` bounds —
each drawn within what `aitherfwd.policy` accepts, so every policy must parse without an
error. Used by the unit properties and by the kernel's acceptance property.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml
from hypothesis import strategies as st

Policy = dict[str, Any]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAMES = st.one_of(
    st.sampled_from(["lan", "world", "dmz", "management", "web", "ssh", "a", "x-1", "v6.only"]),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", fullmatch=True),
)
HOSTS = ["api.example.com", "git.internal.example", "example.org", "a-b.c"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun", "Monday", "FRIDAY", "sunday"]
WELL_KNOWN = [
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/8",
    "10.77.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fd77::/64",
    "fe80::/10",
    "192.0.2.10/32",
    "2001:db8::/32",
]
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


def _not_mapped(net: IPNetwork) -> bool:
    """`::ffff:a.b.c.d` prefixes become IPv4 when parsed: keep the generator's view exact."""
    return not (isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED))


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@st.composite
def networks(draw: st.DrawFn) -> IPNetwork:
    if draw(st.integers(0, 4)) == 0:
        return ipaddress.ip_network(draw(st.sampled_from(WELL_KNOWN)))
    bits = draw(st.sampled_from([32, 128]))
    plen = draw(st.integers(0, bits))
    addr = draw(st.integers(0, 2**bits - 1))
    net = ipaddress.ip_network((addr, plen), strict=False)
    return net if _not_mapped(net) else ipaddress.ip_network("fd77::/64")


def _cidrs(nets: list[IPNetwork]) -> list[str]:
    return [str(x) for x in nets]


def _covered(net: IPNetwork, earlier: list[IPNetwork]) -> bool:
    same = [e for e in earlier if e.version == net.version]
    return any(net.subnet_of(c) for c in ipaddress.collapse_addresses(same))


@st.composite
def zones(draw: st.DrawFn) -> list[Policy]:
    """Ordered zones; a zone every CIDR of which an earlier zone holds is dropped (it is an
    error: it could never match)."""
    names = draw(st.lists(NAMES, max_size=4, unique=True))
    out: list[Policy] = []
    earlier: list[IPNetwork] = []
    for name in names:
        nets = draw(st.lists(networks(), min_size=1, max_size=3))
        if all(_covered(x, earlier) for x in nets):
            continue
        zone: Policy = {"name": name, "cidrs": _cidrs(nets)}
        if draw(st.booleans()):
            zone["description"] = draw(TEXT)
        if all(x.prefixlen for x in nets) and draw(st.integers(0, 3)) == 0:
            zone["containers"] = True  # a forward path (a /0 cannot hold containers)
        out.append(zone)
        earlier += nets
    return out


@st.composite
def port_spec(draw: st.DrawFn) -> int | str:
    lo = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        return lo
    return f"{lo}-{draw(st.integers(lo, 65535))}"


def port_list(min_size: int = 1) -> st.SearchStrategy[Any]:
    """A list of ports and ranges, or (YAML allows it) one port alone."""
    many = st.lists(port_spec(), min_size=min_size, max_size=4)
    return many | port_spec() if min_size else many


@st.composite
def services(draw: st.DrawFn) -> dict[str, Policy]:
    names = draw(st.lists(NAMES, max_size=4, unique=True))
    out: dict[str, Policy] = {}
    for name in names:
        svc: Policy = {"ports": draw(port_list())}
        if draw(st.booleans()):
            svc["protocol"] = draw(st.sampled_from(["tcp", "udp", "any"]))
        if draw(st.booleans()):
            svc["description"] = draw(TEXT)
        out[name] = svc
    return out


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def time_window(draw: st.DrawFn) -> Policy:
    start = draw(st.integers(0, 24 * 60 - 1))
    end = draw(st.integers(0, 24 * 60 - 1))
    end += end >= start  # 00:00-24:00, never equal to start (an empty window is an error)
    window: Policy = {"start": _clock(start), "end": _clock(end)}
    if draw(st.booleans()):
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7))
        window["days"] = days[0] if len(days) == 1 and draw(st.booleans()) else days
    if draw(st.booleans()):
        window["timezone"] = "UTC"
    return window


def _one_or_list(draw: st.DrawFn, values: list[Any]) -> Any:
    return values[0] if len(values) == 1 and draw(st.booleans()) else values


@st.composite
def rule(draw: st.DrawFn, name: str, zone_names: list[str], svcs: dict[str, Policy]) -> Policy:
    action = draw(st.sampled_from(["allow", "deny", "reject", "ALLOW"]))
    r: Policy = {"name": name, "action": action}
    proto = draw(st.sampled_from([None, "any", "tcp", "udp", "icmp"]))
    if proto is not None:
        r["protocol"] = proto
    if zone_names and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(zone_names), min_size=1, max_size=3, unique=True))
        r["zone"] = _one_or_list(draw, chosen)
    if proto != "icmp" and draw(st.booleans()):
        r["dest_ports"] = draw(port_list())
    usable = [
        s
        for s, spec in svcs.items()
        if proto in (None, "any") or spec.get("protocol", "tcp") in (proto, "any")
    ]
    if proto != "icmp" and usable and draw(st.booleans()):
        r["dest_services"] = draw(st.lists(st.sampled_from(usable), min_size=1, max_size=3))
    if draw(st.booleans()):
        r["source_cidrs"] = _one_or_list(draw, _cidrs(draw(st.lists(networks(), max_size=3))))
    if draw(st.integers(0, 3)) == 0:
        r["time_window"] = draw(time_window())
    if action.lower() == "allow" and draw(st.integers(0, 2)) == 0:
        r["rate_limit_rps"] = draw(st.integers(1, 1_000_000))
        if draw(st.booleans()):
            r["burst"] = draw(st.integers(1, 10_000_000))
    if draw(st.booleans()):
        r["log"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        r["description"] = draw(TEXT)
    if draw(st.integers(0, 9)) == 0:
        r["path_prefix"] = "/api/"
    if draw(st.integers(0, 9)) == 0:
        r["authenticated"] = draw(st.booleans())
    applies = [{}, {}, {"applies_to": "host"}, {"applies_to": "containers"}]
    r.update(draw(st.sampled_from(applies)))
    return r


def duration(lo: int = 1, hi: int = 7 * 86_400) -> st.SearchStrategy[Any]:
    seconds = st.integers(lo, hi)
    return (
        seconds | seconds.map(lambda s: f"{s}s") | st.integers(1, hi // 60).map(lambda m: f"{m}m")
    )


@st.composite
def settings(draw: st.DrawFn) -> Policy:
    pool: dict[str, st.SearchStrategy[Any]] = {
        "default_policy": st.sampled_from(["allow", "deny", "reject"]),
        "egress_default_policy": st.sampled_from(["allow", "deny", "reject"]),
        "log_denied": st.booleans(),
        "log_allowed": st.booleans(),
        "max_connections_per_ip": st.integers(0, 10_000_000),
        "syn_flood_threshold": st.integers(0, 10_000_000),
        "connection_idle_timeout": st.integers(1, 86_400 * 7),
        "rule_reload_interval": st.integers(1, 86_400),
        "admin_ports": st.lists(st.integers(1, 65535), max_size=3),
        "scan": st.fixed_dictionaries(
            {}, optional={"ports": st.integers(2, 65535), "window": duration(hi=3600)}
        ),
        "detection_grace": duration(hi=3600),
    }
    keys = draw(st.lists(st.sampled_from(sorted(pool)), unique=True))
    return {k: draw(pool[k]) for k in keys}


@st.composite
def egress_rule(draw: st.DrawFn, name: str) -> Policy:
    r: Policy = {"name": name, "action": draw(st.sampled_from(["allow", "deny", "reject"]))}
    kind = draw(st.sampled_from(["host", "cidr", "list"]))
    if kind == "host":
        r["destination"] = draw(st.sampled_from(HOSTS))
    elif kind == "cidr":
        r["destination"] = str(draw(networks()))
    else:
        r["destination"] = _cidrs(draw(st.lists(networks(), min_size=1, max_size=3)))
    proto = draw(st.sampled_from([None, "tcp", "udp", "any", "icmp"]))
    if proto is not None:
        r["protocol"] = proto
    if proto != "icmp" and draw(st.booleans()):
        r["ports"] = draw(port_list())
    if draw(st.booleans()):
        r["log"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        r["direction"] = "outbound"
    return r


@st.composite
def allowlist(draw: st.DrawFn) -> Policy:
    allow: Policy = {}
    if draw(st.booleans()):
        allow["domains"] = draw(st.lists(st.sampled_from(HOSTS), max_size=3))
    if draw(st.booleans()):
        allow["ips"] = _cidrs(draw(st.lists(networks(), max_size=3)))
    if draw(st.booleans()):
        allow["ports"] = draw(port_list(min_size=0))
    return allow


@st.composite
def egress(draw: st.DrawFn) -> Policy:
    """Host names (rule destinations, allowlisted domains) always come with resolvers."""
    eg: Policy = {}
    if draw(st.booleans()):
        eg["default_action"] = draw(st.sampled_from(["allow", "deny", "reject"]))
    rules = [draw(egress_rule(name)) for name in draw(st.lists(NAMES, max_size=3, unique=True))]
    if rules or draw(st.booleans()):
        eg["rules"] = rules
    if draw(st.booleans()):
        eg["allowlist"] = draw(allowlist())
    hosts = any(r["destination"] in HOSTS for r in rules)
    if hosts or eg.get("allowlist", {}).get("domains") or draw(st.booleans()):
        nets = draw(st.lists(networks(), min_size=1, max_size=2))
        eg["resolvers"] = [str(x.network_address) for x in nets]
    for key in ("known_good", "known_bad"):
        if draw(st.booleans()):
            eg[key] = _cidrs(draw(st.lists(networks(), max_size=3)))
    if draw(st.booleans()):
        lo = draw(st.integers(1, 3600))
        eg["dns"] = {"min_refresh": lo, "max_refresh": draw(st.integers(lo, 86_400))}
        if draw(st.booleans()):
            eg["dns"]["grace"] = draw(duration())
    return eg


@st.composite
def sandbox(draw: st.DrawFn) -> Policy:
    max_ttl = draw(st.integers(60, 7 * 86_400))
    box: Policy = {"max_ttl": max_ttl, "default_ttl": draw(st.integers(1, max_ttl))}
    if draw(st.booleans()):
        box["allowed_ports"] = draw(port_list(min_size=0))
    return box


@st.composite
def policies(draw: st.DrawFn, *, with_egress: bool = True) -> Policy:
    """A valid policy as the mapping a YAML file holds."""
    p: Policy = {"version": 1}
    if draw(st.booleans()):
        p["settings"] = draw(settings())
    zs = draw(zones())
    if zs or draw(st.booleans()):
        p["zones"] = zs
    svcs = draw(services())
    if svcs:
        p["services"] = svcs
    zone_names = [z["name"] for z in zs]
    names = draw(st.lists(NAMES, max_size=6, unique=True))
    p["rules"] = [draw(rule(name, zone_names, svcs)) for name in names]
    if draw(st.integers(0, 3)) == 0:
        p["reputation"] = {
            "threshold": draw(st.integers(1, 1_000_000)),
            "never_block": _cidrs(draw(st.lists(networks(), max_size=2))),
        }
    if with_egress and draw(st.booleans()):
        p["egress"] = draw(egress())
    if draw(st.integers(0, 3)) == 0:
        p["sandbox"] = draw(sandbox())
    return p


def to_yaml(policy: Policy) -> str:
    return yaml.safe_dump(policy, sort_keys=False, allow_unicode=True)
