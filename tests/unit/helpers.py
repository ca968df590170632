"""Helpers for the pure-core unit tests: parse YAML text and pick diagnostics."""

from __future__ import annotations

import textwrap

from aitherfwd.policy.diagnostics import Diagnostic, Severity
from aitherfwd.policy.model import Policy
from aitherfwd.policy.parse import ParseResult, parse_policy

BASE = """\
version: 1
zones:
  - {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}
  - {name: internal, cidrs: [10.0.0.0/8, "fd00::/8"]}
  - {name: external, cidrs: [0.0.0.0/0, "::/0"]}
services:
  Secrets: {ports: [8111], protocol: tcp}
  Bastion: {ports: [443, 80], protocol: tcp}
  DNS: {ports: [53], protocol: any}
"""


def parse(text: str, *, base: bool = True) -> ParseResult:
    body = BASE + textwrap.dedent(text) if base else textwrap.dedent(text)
    return parse_policy(body, "policy.yaml")


def ok(text: str) -> Policy:
    result = parse(text)
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return result.policy


def errors(text: str, *, base: bool = True) -> list[Diagnostic]:
    result = parse(text, base=base)
    assert result.policy is None
    return [d for d in result.diagnostics if d.severity is Severity.ERROR]


def codes(text: str, *, base: bool = True) -> list[str]:
    return [d.code for d in errors(text, base=base)]
