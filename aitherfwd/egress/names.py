"""Names of the kernel objects of outbound control (layer L1, pure).

Owns: the output chain, its counters, the sets the daemon fills with resolved addresses
(`egress_dom_v4/v6` for the allowlist, `erule_<rule>_v4/v6` for rules with a host name)
and the per-grant port sets of sandbox grants (`sandbox_port_v4/v6`, address or prefix .
port, interval sets).
"""

from __future__ import annotations

OUTPUT_CHAIN = "output"
DOMAIN_BASE = "egress_dom"
PORT_SETS = {4: "sandbox_port_v4", 6: "sandbox_port_v6"}
SANDBOX_HASH = {4: "sandbox_v4", 6: "sandbox_v6"}
SANDBOX_NET = {4: "sandbox_v4_net", 6: "sandbox_v6_net"}

COUNTER_DEFAULT = "egress_default"
COUNTER_KNOWN_BAD = "egress_known_bad"
COUNTER_KNOWN_GOOD = "egress_known_good"
COUNTER_ALLOWLIST = "egress_allowlist"
COUNTER_SANDBOX = "egress_sandbox"
COUNTER_DNS = "egress_dns"

# rule names the outbound verdicts report for the built-in steps
RULE_LOOPBACK = "builtin:loopback"
RULE_DNS = "builtin:dns"
RULE_KNOWN_BAD = "known_bad"
RULE_KNOWN_GOOD = "known_good"
RULE_ALLOWLIST = "allowlist"
RULE_SANDBOX = "sandbox"


def rule_base(rule: str) -> str:
    return f"erule_{rule}"


def domain_set(base: str, family: int) -> str:
    return f"{base}_v{family}"


def rule_counter(rule: str) -> str:
    return f"egress_rule_{rule}"


def addr_type(family: int) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"
