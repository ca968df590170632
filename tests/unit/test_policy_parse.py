"""The policy language: what is accepted, and that every mistake is located and coded."""

from __future__ import annotations

import ipaddress

from aitherfwd.policy.model import Action, PortRange, Protocol
from tests.unit.helpers import codes, errors, ok, parse


def test_issue_example_rule_parses_with_services_resolved_to_ports() -> None:
    p = ok("""
    rules:
      - name: external_deny_sensitive
        zone: external
        dest_services: [Secrets]
        action: deny
      - name: web
        zone: [external, internal]
        dest_ports: [443, "8000-8100"]
        protocol: tcp
        source_cidrs: [203.0.113.0/24]
        time_window: {days: [mon, tue, wed, thu, fri], start: "08:00", end: "18:00"}
        rate_limit_rps: 20
        log: true
        action: allow
    """)
    deny, web = p.rules
    assert deny.action is Action.DENY and deny.zones == ("external",)
    assert [(m.protocol, m.ranges) for m in deny.ports] == [
        (Protocol.TCP, (PortRange(8111, 8111),))
    ]
    assert web.ports[0].ranges == (PortRange(443, 443), PortRange(8000, 8100))
    assert web.time_window is not None and web.time_window.start == 8 * 3600
    assert web.rate_limit is not None and web.rate_limit.burst == 20


def test_unquoted_times_are_read_as_written_not_as_yaml_sexagesimal() -> None:
    p = ok("""
    rules:
      - {name: r, time_window: {start: 08:00, end: 18:00}, action: allow}
    """)
    assert p.rules[0].time_window is not None
    assert (p.rules[0].time_window.start, p.rules[0].time_window.end) == (28800, 64800)


def test_service_with_protocol_any_expands_to_tcp_and_udp() -> None:
    p = ok("rules:\n  - {name: dns, dest_services: [DNS], action: allow}\n")
    assert [m.protocol for m in p.rules[0].ports] == [Protocol.TCP, Protocol.UDP]


def test_port_out_of_range_is_located_with_code() -> None:
    (d,) = errors("rules:\n  - {name: r, dest_ports: [70000], action: allow}\n")
    assert d.code == "E-PORT-RANGE"
    assert d.render() == (
        f"policy.yaml:{d.pos.line}:{d.pos.col}: error[E-PORT-RANGE] "  # type: ignore[union-attr]
        "rules[0].dest_ports[0]: 70000 is out of range 1-65535"
    )
    assert d.pos is not None and d.pos.line == 11


def test_misspelt_service_suggests_the_right_one() -> None:
    (d,) = errors("rules:\n  - {name: r, dest_services: [Secrest], action: deny}\n")
    assert d.code == "E-UNKNOWN-SERVICE"
    assert "did you mean 'Secrets'?" in d.message


def test_misspelt_zone_and_key_suggest_fixes() -> None:
    diags = errors("rules:\n  - {name: r, zone: externel, dest_prots: [1], action: deny}\n")
    by_code = {d.code: d for d in diags}
    assert "did you mean 'external'?" in by_code["E-UNKNOWN-ZONE"].message
    assert "did you mean 'dest_ports'?" in by_code["E-UNKNOWN-KEY"].message


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = codes("""
    settings: {default_policy: maybe, max_connections_per_ip: -1}
    rules:
      - {name: a, dest_ports: [0], action: allow}
      - {name: b, zone: nowhere, action: allow}
      - {name: c, action: permit}
      - {name: a, action: deny}
    """)
    assert {"E-ENUM", "E-RANGE", "E-PORT-RANGE", "E-UNKNOWN-ZONE"} <= set(found)


def test_unknown_top_level_key_is_an_error() -> None:
    assert codes("rulez: []\n") == ["E-UNKNOWN-KEY"]


def test_duplicate_keys_are_an_error_not_last_wins() -> None:
    assert "E-DUPLICATE-KEY" in codes("rules:\n  - name: a\n    action: allow\n    action: deny\n")


def test_duplicate_rule_names_are_an_error() -> None:
    assert "E-DUPLICATE-NAME" in codes(
        "rules:\n  - {name: a, action: allow}\n  - {name: a, action: deny}\n"
    )


def test_wrong_types_are_errors() -> None:
    assert "E-TYPE" in codes("rules:\n  - {name: r, log: 'yes please', action: allow}\n")
    assert "E-TYPE" in codes("zones: {a: b}\n", base=False)
    assert "E-TYPE" in codes("version: 1\nrules: {name: r}\n", base=False)


def test_malformed_yaml_is_located() -> None:
    (d,) = errors("version: 1\nrules: [\n  {name: r\n", base=False)
    assert d.code == "E-YAML" and d.pos is not None and d.pos.line >= 2


def test_version_is_optional_but_only_1_is_accepted() -> None:
    assert parse("rules: []\n", base=False).ok
    assert codes("version: 2\n", base=False) == ["E-RANGE"]


def test_cidr_with_host_bits_suggests_the_network() -> None:
    (d,) = errors("rules:\n  - {name: r, source_cidrs: [10.1.2.3/8], action: allow}\n")
    assert d.code == "E-CIDR" and "did you mean 10.0.0.0/8?" in d.message


def test_cidr_junk_zone_ids_and_leading_zeros_are_rejected() -> None:
    for bad in ["10.0.0.256", "fe80::1%eth0", "010.0.0.1", "1.2.3.4 }; flush ruleset"]:
        assert codes(f"rules:\n  - {{name: r, source_cidrs: ['{bad}'], action: allow}}\n") == [
            "E-CIDR"
        ], bad


def test_ipv4_mapped_ipv6_is_normalised_to_ipv4() -> None:
    p = ok("rules:\n  - {name: r, source_cidrs: ['::ffff:192.0.2.1'], action: allow}\n")
    assert p.rules[0].source_cidrs == (ipaddress.ip_network("192.0.2.1/32"),)


def test_zone_entirely_behind_earlier_zones_is_an_error() -> None:
    found = codes(
        """
    version: 1
    zones:
      - {name: all, cidrs: [0.0.0.0/0]}
      - {name: lan, cidrs: [10.0.0.0/8]}
    """,
        base=False,
    )
    assert found == ["E-ZONE-SHADOWED"]


def test_partially_overlapping_zones_are_fine_first_match_wins() -> None:
    p = ok("rules: []\n")
    assert [z.name for z in p.zones] == ["loopback", "internal", "external"]


def test_icmp_with_ports_and_conflicting_service_protocols_are_errors() -> None:
    assert codes("rules:\n  - {name: r, protocol: icmp, dest_ports: [1], action: allow}\n") == [
        "E-PROTOCOL"
    ]
    assert codes(
        "rules:\n  - {name: r, protocol: udp, dest_services: [Secrets], action: allow}\n"
    ) == ["E-PROTOCOL"]


def test_rate_limit_only_on_allow_rules() -> None:
    assert codes("rules:\n  - {name: r, rate_limit_rps: 5, action: deny}\n") == ["E-RATE-ACTION"]


def test_time_window_errors() -> None:
    assert "E-TIME" in codes(
        "rules:\n  - {name: r, time_window: {start: '25:00', end: '18:00'}, action: allow}\n"
    )
    assert "E-DAY" in codes(
        "rules:\n  - {name: r, time_window: {days: [funday], start: '01:00', end: '02:00'}, "
        "action: allow}\n"
    )
    assert "E-TIMEZONE" in codes(
        "rules:\n  - {name: r, time_window: {start: '01:00', end: '02:00', "
        "timezone: Mars/Olympus_Mons}, action: allow}\n"
    )


def test_layer7_fields_are_kept_and_warned_about() -> None:
    result = parse(
        "rules:\n  - {name: r, path_prefix: /admin, authenticated: true, action: allow}\n"
    )
    assert result.policy is not None
    assert result.policy.rules[0].path_prefix == "/admin"
    assert [d.code for d in result.diagnostics] == ["W-LAYER7", "W-LAYER7"]


def test_rule_after_unconditional_rule_for_same_zone_is_warned_unreachable() -> None:
    result = parse(
        "rules:\n  - {name: a, zone: external, action: deny}\n"
        "  - {name: b, zone: external, dest_ports: [443], action: allow}\n"
    )
    assert result.policy is not None
    assert [d.code for d in result.diagnostics] == ["W-RULE-UNREACHABLE"]


def test_alias_bomb_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    assert "E-YAML" in codes(bomb, base=False)


def test_names_that_could_inject_are_rejected() -> None:
    assert "E-NAME" in codes('rules:\n  - {name: "a\\"; flush ruleset", action: allow}\n')


def test_services_file_is_read_relative_to_the_policy_and_merged() -> None:
    from aitherfwd.policy.parse import parse_policy  # noqa: PLC0415

    files = {"svc.yaml": "services:\n  Vault: {ports: [8200]}\n"}

    def read(rel: str) -> tuple[str, str]:
        if rel not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return rel, files[rel]

    text = (
        "version: 1\nservices_file: svc.yaml\n"
        "rules:\n  - {name: v, dest_services: [Vault], action: allow}\n"
    )
    result = parse_policy(text, "p.yaml", read)
    assert result.policy is not None
    assert result.policy.rules[0].ports[0].ranges == (PortRange(8200, 8200),)
    missing = parse_policy(text.replace("svc.yaml", "nope.yaml"), "p.yaml", read)
    assert [d.code for d in missing.diagnostics] == ["E-SERVICES-FILE", "E-UNKNOWN-SERVICE"]
    bad = parse_policy(text, "p.yaml", lambda rel: (rel, "services:\n  Vault: {ports: [0]}\n"))
    (d,) = [d for d in bad.diagnostics if d.code == "E-PORT-RANGE"]
    assert d.pos is not None and d.pos.file == "svc.yaml" and d.pos.line == 2


def test_detection_settings_parse_with_durations_and_defaults() -> None:
    p = ok("settings: {scan: {ports: 20, window: 1m}, detection_grace: 5s}\nrules: []\n")
    assert (p.settings.scan.ports, p.settings.scan.window) == (20, 60)
    assert p.settings.detection_grace == 5
    d = ok("rules: []\n").settings
    assert (d.scan.ports, d.scan.window, d.detection_grace) == (10, 10, 2)


def test_detection_settings_mistakes_are_located() -> None:
    assert "E-UNKNOWN-KEY" in codes("settings: {scan: {port: 5}}\nrules: []\n")
    assert "E-DURATION" in codes("settings: {scan: {window: 0s}}\nrules: []\n")
    assert codes("settings: {scan: {ports: 1}}\nrules: []\n")


def test_prefix_lengths_and_durations_are_plain_ascii() -> None:
    """Issue 14, item 18, on the policy side: `/032` and Arabic-Indic digits are refused."""
    import pytest  # noqa: PLC0415

    from aitherfwd.durations import parse_duration  # noqa: PLC0415
    from aitherfwd.policy.fields import parse_cidr  # noqa: PLC0415

    arabic_24 = "\u0662\u0664"  # Arabic-Indic digits: isdigit() says yes
    for text in ("10.0.0.0/032", "10.0.0.0/+8", f"10.0.0.0/{arabic_24}"):
        with pytest.raises(ValueError, match="plain digits"):
            parse_cidr(text)
    assert str(parse_cidr("10.0.0.0/8")) == "10.0.0.0/8"
    arabic_15 = "\u0661\u0665"
    for value in (f"{arabic_15}m", arabic_15):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(value)
    assert parse_duration("15m") == 900
