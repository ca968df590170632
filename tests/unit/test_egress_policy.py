"""The egress: and sandbox: sections parse into the model, and every mistake is located."""

from __future__ import annotations

import ipaddress

from aitherfwd.policy.model import Action, Protocol
from tests.unit.helpers import codes, errors, ok, parse

FULL = """\
egress:
  default_action: deny
  resolvers: [10.77.0.53]
  rules:
    - name: block-cloud-metadata
      destination: 169.254.169.254
      protocol: tcp
      action: deny
    - {name: git, destination: git.example.com., ports: [22], protocol: tcp, action: allow}
  allowlist:
    domains: [API.OpenAI.com, api.github.com]
    ips: [198.51.100.5, 192.0.2.0/24]
    ports: [443, 80]
  known_good: [192.0.2.0/24]
  known_bad: [203.0.113.66]
  dns: {min_refresh: 5s, max_refresh: 1h, grace: 10m}
sandbox:
  max_ttl: 24h
  default_ttl: 1h
  allowed_ports: [443, 80]
"""


def test_the_issue_example_parses_into_the_model() -> None:
    p = ok(FULL)
    eg = p.egress
    assert eg is not None and eg.default_action is Action.DENY
    assert eg.resolvers == (ipaddress.ip_address("10.77.0.53"),)
    assert eg.domains == ("api.github.com", "api.openai.com")  # lowercased, sorted
    assert [r.name for r in eg.rules] == ["block-cloud-metadata", "git"]
    assert eg.rules[0].protocol is Protocol.TCP and eg.rules[0].host is None
    assert eg.rules[1].host == "git.example.com"  # trailing dot dropped
    assert [str(r) for r in eg.allow_ports] == ["80", "443"]
    assert (eg.dns.min_refresh, eg.dns.max_refresh, eg.dns.grace) == (5, 3600, 600)
    assert (p.sandbox.max_ttl, p.sandbox.default_ttl) == (86400, 3600)
    assert eg.hosts() == {
        "api.github.com": ("egress_dom",),
        "api.openai.com": ("egress_dom",),
        "git.example.com": ("erule_git",),
    }


def test_without_default_action_the_settings_egress_default_applies() -> None:
    p = ok("settings: {egress_default_policy: reject}\negress: {known_bad: [203.0.113.1]}\n")
    assert p.egress is not None and p.egress.default_action is Action.REJECT
    assert ok("rules: []\n").egress is None


def test_unknown_keys_are_errors_with_a_suggestion() -> None:
    errs = errors("egress:\n  allowlist: {domain: [a.example]}\n")
    assert errs[0].code == "E-UNKNOWN-KEY" and "did you mean 'domains'" in errs[0].message
    assert errs[0].pos is not None and errs[0].pos.line > 1
    assert codes("sandbox: {max_tll: 1h}\n") == ["E-UNKNOWN-KEY"]


def test_bad_values_are_located_and_coded() -> None:
    assert codes("egress: {known_bad: [203.0.113.1/24]}\n") == ["E-CIDR"]
    assert codes("egress: {allowlist: {domains: ['bad name!']}}\n") == ["E-DOMAIN"]
    assert codes("egress: {allowlist: {ports: [70000]}}\n") == ["E-PORT-RANGE"]
    assert codes("egress: {resolvers: [10.0.0.0/8]}\n") == ["E-ADDRESS"]
    assert codes("egress: {rules: [{name: x, destination: '300.1.1.1', action: deny}]}\n") == [
        "E-DESTINATION"
    ]
    assert codes(
        "egress: {rules: [{name: x, destination: 1.2.3.4, action: deny, direction: inbound}]}\n"
    ) == ["E-DIRECTION"]


def test_cross_field_mistakes() -> None:
    assert codes("sandbox: {max_ttl: 1h, default_ttl: 2h}\n") == ["E-SANDBOX-TTL"]
    assert codes("egress: {dns: {min_refresh: 2h, max_refresh: 1h}}\n") == ["E-DNS-REFRESH"]
    assert codes("egress: {allowlist: {domains: [a.example]}}\n") == ["E-NO-RESOLVERS"]


def test_known_bad_overlapping_the_allowlist_is_a_warning() -> None:
    result = parse("egress: {allowlist: {ips: [192.0.2.0/24]}, known_bad: [192.0.2.7]}\n")
    assert result.policy is not None
    assert [d.code for d in result.diagnostics] == ["W-KNOWN-BAD-WINS"]
