"""Journal sources: the policy section, its located errors and check warnings, and the pure
matcher on real log lines of OpenSSH, nginx and Apache (the builtins' samples)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from aitherfwd.adapters.journal import _text
from aitherfwd.dynamic.journal import judge, matches_for_reader, parse_address
from aitherfwd.policy.journal_builtins import BUILTINS
from aitherfwd.policy.model import JournalSource, Severity
from aitherfwd.policy.parse import parse_policy

SSH_FIELDS = {"SYSLOG_IDENTIFIER": "sshd", "_UID": "0"}


def sources(text: str) -> tuple[JournalSource, ...]:
    result = parse_policy("version: 1\njournal:\n" + text, "p.yaml")
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return result.policy.journal


def rendered(text: str) -> list[str]:
    return [d.render() for d in parse_policy("version: 1\njournal:\n" + text, "p.yaml").diagnostics]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_sample_line_gives_its_address_and_quiet_lines_give_nothing(
    name: str,
) -> None:
    (src,) = sources(f"  - {{name: s, builtin: {name}, mode: aggressive}}\n")
    (normal,) = sources(f"  - {{name: s, builtin: {name}}}\n")
    b = BUILTINS[name]
    fields = dict(zip([f for f, _ in b.match], [v[0] for _, v in b.match], strict=True))
    for line, address in b.samples + b.aggressive_samples:
        verdict = judge({**fields, "MESSAGE": line}, [src])
        assert verdict.hit is not None, line
        assert verdict.hit.address == ipaddress.ip_address(address), line
    for line in b.quiet:
        assert judge({**fields, "MESSAGE": line}, [normal]).hit is None, line


def test_builtin_policies_check_without_any_warning() -> None:
    text = "".join(f"  - {{name: {n}, builtin: {n}}}\n" for n in BUILTINS)
    assert rendered(text) == []
    aggressive = "".join(f"  - {{name: {n}, builtin: {n}, mode: aggressive}}\n" for n in BUILTINS)
    assert rendered(aggressive) == []


def test_five_failed_ssh_passwords_are_five_medium_threat_events() -> None:
    (src,) = sources("  - {name: ssh, builtin: openssh}\n")
    line = "Failed password for root from 192.0.2.7 port {} ssh2"
    hits = [judge({**SSH_FIELDS, "MESSAGE": line.format(p)}, [src]).hit for p in range(5)]
    assert all(h is not None and h.type == "SSH_AUTH_FAILURE" for h in hits)
    assert {h.severity for h in hits if h} == {Severity.MEDIUM}
    assert hits[0] is not None and hits[0].detail.startswith("ssh: Failed password")


def test_an_unprivileged_logger_posing_as_sshd_is_not_read() -> None:
    (src,) = sources("  - {name: ssh, builtin: openssh}\n")
    forged = {"SYSLOG_IDENTIFIER": "sshd", "_UID": "65534"}
    line = "Failed password for root from 192.0.2.7 port 1 ssh2"
    assert judge({**forged, "MESSAGE": line}, [src]).source is None
    assert ("_UID", ("0",)) in src.match  # journald filters on it before Python sees one


def test_a_user_name_holding_an_address_does_not_choose_the_offender() -> None:
    (src,) = sources("  - {name: ssh, builtin: openssh}\n")
    line = "Invalid user root from 10.77.9.9 port 22 from 192.0.2.8 port 4711"
    verdict = judge({**SSH_FIELDS, "MESSAGE": line}, [src])
    assert verdict.hit is not None and str(verdict.hit.address) == "192.0.2.8"


def test_custom_source_matches_fields_and_reads_the_address_group() -> None:
    (src,) = sources(
        "  - name: myapp\n"
        "    match: {SYSLOG_IDENTIFIER: myapp, _UID: [0, 1000]}\n"
        "    patterns: ['login failed for user \\S+ from (?P<address>\\S+)']\n"
        "    type: brute_force\n"
        "    severity: low\n"
        "    examples: ['login failed for user bob from 2001:db8::1']\n"
    )
    assert src.match == (("SYSLOG_IDENTIFIER", ("myapp",)), ("_UID", ("0", "1000")))
    entry = {"SYSLOG_IDENTIFIER": "myapp", "_UID": "1000"}
    hit = judge({**entry, "MESSAGE": "login failed for user bob from ::ffff:192.0.2.9"}, [src])
    assert hit.hit is not None
    assert (hit.hit.type, hit.hit.severity) == ("BRUTE_FORCE", Severity.LOW)
    assert str(hit.hit.address) == "192.0.2.9"  # IPv4-mapped is IPv4
    junk = judge({**entry, "MESSAGE": "login failed for user bob from 300.1.1.1"}, [src])
    assert junk.hit is None and junk.bad_address == "300.1.1.1"
    assert judge({"SYSLOG_IDENTIFIER": "other", "MESSAGE": "x"}, [src]).source is None


@pytest.mark.parametrize(
    "text", ["fe80::1%eth0", "10.0.0.0/8", "010.1.1.1", "", "host", "\u0661.1.1.1"]
)
def test_what_is_not_an_address(text: str) -> None:
    assert parse_address(text) is None


def test_sources_become_one_reader_conjunction_each_without_repeats() -> None:
    srcs = sources("  - {name: a, builtin: openssh}\n  - {name: b, builtin: openssh}\n")
    assert matches_for_reader(srcs) == (srcs[0].match,)


def test_policy_errors_are_located_and_all_reported() -> None:
    lines = rendered(
        "  - name: bad\n"
        "    match: {_UID: 0}\n"
        "    patterns: ['(unclosed', 'no group']\n"
        "    type: 'has space'\n"
        "    severity: huge\n"
        "  - {name: web, builtin: ngnix}\n"
        "  - {name: web2, builtin: nginx, patterns: [x]}\n"
        "  - {name: c, match: {}, patterns: [x], type: X}\n"
        "  - {name: d, patterns: ['(?P<address>x)']}\n"
        "  - {name: ok, builtin: openssh}\n"
        "  - {name: ok, builtin: apache}\n"
    )
    expected = [
        "p.yaml:5:16: error[E-JOURNAL-REGEX] journal[0].patterns[0]: not a regular expression:",
        "p.yaml:5:29: error[E-JOURNAL-ADDRESS-GROUP] journal[0].patterns[1]:",
        "p.yaml:6:11: error[E-THREAT-TYPE] journal[0].type:",
        "p.yaml:7:15: error[E-ENUM] journal[0].severity: 'huge' is not one of",
        "p.yaml:8:26: error[E-ENUM] journal[1].builtin: 'ngnix' is not one of openssh, nginx, "
        "apache (did you mean 'nginx'?)",
        "p.yaml:9:34: error[E-JOURNAL-SOURCE] journal[2].patterns:",
        "p.yaml:10:22: error[E-EMPTY] journal[3].match:",
        "error[E-MISSING-KEY] journal[4].match:",
        "error[E-MISSING-KEY] journal[4].type:",
        "p.yaml:13:12: error[E-DUPLICATE-NAME] journal[6].name:",
    ]
    for want in expected:
        assert any(want in line for line in lines), (want, lines)


def test_check_warns_of_unmatched_patterns_missing_examples_and_forgeable_matches() -> None:
    lines = rendered(
        "  - name: a\n"
        "    match: {SYSLOG_IDENTIFIER: a}\n"
        "    patterns: ['from (?P<address>\\S+)']\n"
        "    type: X\n"
        "  - name: b\n"
        "    match: {_SYSTEMD_UNIT: b.service}\n"
        "    patterns: ['from (?P<address>\\S+)', 'never (?P<address>\\d+)']\n"
        "    type: X\n"
        "    examples: ['bad from 192.0.2.1', 'nothing here', 'bad from notanip']\n"
    )
    assert any("warning[W-JOURNAL-FORGEABLE] journal[0].match" in x for x in lines)
    assert any("warning[W-JOURNAL-NO-EXAMPLES] journal[0].examples" in x for x in lines)
    assert not any("W-JOURNAL-FORGEABLE] journal[1]" in x for x in lines)
    assert any(
        "W-JOURNAL-UNMATCHED] journal[1].examples[1]: example fits no pattern" in x for x in lines
    )
    assert any("journal[1].examples[2]: example gives no valid address" in x for x in lines)
    assert any("journal[1].patterns[1]: pattern matches none of the example" in x for x in lines)
    assert len(lines) == 5


def test_an_oversized_line_is_judged_on_its_first_characters_only_and_fast() -> None:
    (src,) = sources("  - {name: ssh, builtin: openssh}\n")
    huge = "Invalid user " + "a " * 500_000 + "from 192.0.2.20 port 1"
    start = time.perf_counter()
    verdict = judge({**SSH_FIELDS, "MESSAGE": huge}, [src])
    assert verdict.source == "ssh" and verdict.hit is None  # the address lies beyond the cut
    assert time.perf_counter() - start < 0.5


def test_entries_as_the_adapter_gives_them_are_text_whatever_the_journal_holds() -> None:
    assert _text(b"Failed \xff password") == "Failed \ufffd password"
    assert _text(0) == "0"
    assert _text([b"first", b"second"]) == "first"
