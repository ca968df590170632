"""A policy written the way seed 000 writes it loads: no `version`, its settings, its
service registry shapes."""

from __future__ import annotations

import textwrap

from aitherfwd.policy.model import PortRange, Protocol
from aitherfwd.policy.parse import parse_policy
from tests.unit.helpers import parse

SEED = """\
settings:
  default_policy: deny
  log_denied: true
  log_allowed: false
  max_connections_per_ip: 500
  syn_flood_threshold: 50
  connection_idle_timeout: 300
  rule_reload_interval: 30
zones:
  - {name: docker, cidrs: [172.17.0.0/16, 172.18.0.0/16, 172.19.0.0/16]}
  - {name: internal, cidrs: [10.0.0.0/8, 192.168.0.0/16, 172.16.0.0/12]}
  - {name: external, cidrs: [0.0.0.0/0]}
services:
  - {name: Secrets, port: 8111}
  - {name: SecurityCore, port: 8112, description: core}
  - {name: Strata, ports: [8136, "9000-9001"], protocol: tcp}
rules:
  - name: docker_mesh_allow
    zone: docker
    action: allow
    description: "Services within Docker mesh can talk to each other"
  - name: external_deny_sensitive
    zone: external
    dest_services: [Secrets, SecurityCore, Strata]
    action: deny
    description: "Never expose secrets to the internet"
"""


def test_seed_000_policy_loads_without_a_version_and_with_a_service_list() -> None:
    result = parse_policy(SEED, "seed.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    p = result.policy
    assert p.version == 1 and p.settings.connection_idle_timeout == 300
    assert {s.name: s.ports for s in p.services} == {
        "Secrets": (PortRange(8111, 8111),),
        "SecurityCore": (PortRange(8112, 8112),),
        "Strata": (PortRange(8136, 8136), PortRange(9000, 9001)),
    }
    (deny,) = [r for r in p.rules if r.name == "external_deny_sensitive"]
    assert deny.ports[0].protocol is Protocol.TCP and len(deny.ports[0].ranges) == 3


def test_registry_map_takes_bare_ports_and_a_singular_port_key() -> None:
    text = "services:\n  A: 8111\n  B: [80, 443]\n  C: {port: 53, protocol: udp}\n"
    p = parse_policy(text, "p.yaml").policy
    assert p is not None
    by = {s.name: s for s in p.services}
    assert by["A"].ports == (PortRange(8111, 8111),)
    assert by["B"].ports == (PortRange(80, 80), PortRange(443, 443))
    assert by["C"].protocol is Protocol.UDP


def test_registry_list_entry_without_a_name_is_a_located_error() -> None:
    text = textwrap.dedent("""\
        services:
          - {port: 8111}
        """)
    result = parse_policy(text, "p.yaml")
    assert result.policy is None
    (d,) = result.diagnostics
    assert d.code == "E-MISSING-KEY" and d.pos is not None and d.pos.line == 2


def test_registry_list_with_a_name_twice_is_an_error() -> None:
    text = "services:\n  - {name: A, port: 1}\n  - {name: A, port: 2}\n"
    result = parse_policy(text, "p.yaml")
    assert [d.code for d in result.diagnostics] == ["E-DUPLICATE-NAME"]


def test_port_and_ports_together_is_an_unknown_key_error() -> None:
    r = parse("rules: []\n")
    assert r.ok
    result = parse_policy("services:\n  A: {port: 1, ports: [2]}\n", "p.yaml")
    assert [d.code for d in result.diagnostics] == ["E-UNKNOWN-KEY"]


def test_an_empty_policy_file_is_an_error_not_a_deny_everything_policy() -> None:
    """Without a required `version`, an empty (or half-written) file must still never
    load: a reload caught between truncate and write would deny everything."""
    for text in ("", "\n", "# nothing yet\n", "{}\n"):
        result = parse_policy(text, "p.yaml")
        assert result.policy is None
        assert [d.code for d in result.diagnostics] == ["E-EMPTY"], text
