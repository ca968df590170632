"""Properties of the policy pipeline over random valid policies (hypothesis; no root): every
valid policy parses without an error, compiles deterministically (also across processes
with other hash seeds) and independently of the order of mapping keys, and every pair of
policies reconciles — by delta and by transaction — into exactly the second one's table
while keeping the bans."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.nft import names as n
from aitherfwd.policy.diagnostics import Severity
from aitherfwd.policy.model import Policy
from aitherfwd.policy.parse import parse_policy
from aitherfwd.reconcile import Observed, delta, plan, transaction
from tests.unit.nftsim import Table
from tests.unit.policy_strategies import policies, to_yaml

BAN = {"elem": {"val": "198.51.100.7", "timeout": 900}}


def _parse(text: str) -> Policy:
    result = parse_policy(text, "policy.yaml")
    errors = [d.render() for d in result.diagnostics if d.severity is Severity.ERROR]
    assert result.policy is not None and not errors, (errors, text)
    return result.policy


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """The same document with every mapping's keys in another order (lists keep theirs)."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


def _without_policy_hash(rs: Ruleset) -> list[Any]:
    """The objects, less the comment that records the hash of the policy's text."""
    return [
        o
        for o in rs.objects
        if not ("rule" in o and o["rule"]["comment"].startswith("aitherfwd policy="))
    ]


@given(policies())
def test_every_generated_valid_policy_parses_without_an_error(doc: dict[str, Any]) -> None:
    _parse(to_yaml(doc))


@given(policies())
def test_compiling_twice_gives_identical_output_and_hash(doc: dict[str, Any]) -> None:
    text = to_yaml(doc)
    first, second = compile_policy(_parse(text)), compile_policy(_parse(text))
    assert first.render_json() == second.render_json()
    assert first.sha256 == second.sha256 and first.policy_sha256 == second.policy_sha256
    again = compile_policy(_parse(text))
    assert again.objects == first.objects


@given(policies(), st.randoms(use_true_random=False))
def test_the_ruleset_does_not_depend_on_the_order_of_mapping_keys(
    doc: dict[str, Any], rnd: random.Random
) -> None:
    original = compile_policy(_parse(to_yaml(doc)))
    permuted = compile_policy(_parse(to_yaml(_shuffled(doc, rnd))))
    assert permuted.sha256 == original.sha256
    assert _without_policy_hash(permuted) == _without_policy_hash(original)


@settings(max_examples=3)
@given(st.lists(policies(), min_size=8, max_size=8))
def test_the_ruleset_hash_is_the_same_under_another_hash_seed(docs: list[dict[str, Any]]) -> None:
    texts = [to_yaml(d) for d in docs]
    here = [compile_policy(_parse(t)).sha256 for t in texts]
    script = (
        "import json, sys\n"
        "from aitherfwd.compiler import compile_policy\n"
        "from aitherfwd.policy.parse import parse_policy\n"
        "texts = json.load(sys.stdin)\n"
        "out = [compile_policy(parse_policy(t, 'policy.yaml').policy).sha256 for t in texts]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": str(random.Random(here[0]).randrange(1, 2**32))}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout) == here


@settings(max_examples=30)
@given(policies(), policies())
def test_a_delta_between_any_two_policies_reaches_the_second_and_keeps_the_bans(
    before_doc: dict[str, Any], after_doc: dict[str, Any]
) -> None:
    before = compile_policy(_parse(to_yaml(before_doc)))
    after = compile_policy(_parse(to_yaml(after_doc)))
    table = Table.of(before)
    table.add_elements("block_v4", [BAN])
    counters = {c: table.serial("counter", c) for c in before.names("counter")}
    table.apply(delta(before, after))
    assert table.static() == Table.of(after).static()
    assert table.elements("block_v4") == [BAN]
    for name in set(counters) & set(after.names("counter")):
        assert table.serial("counter", name) == counters[name]  # its packets are kept
    assert not plan(after, Observed.from_listing(table.listing())).changed


@settings(max_examples=30)
@given(policies(), policies())
def test_a_transaction_between_any_two_policies_reaches_the_second_and_keeps_the_bans(
    before_doc: dict[str, Any], after_doc: dict[str, Any]
) -> None:
    before = compile_policy(_parse(to_yaml(before_doc)))
    after = compile_policy(_parse(to_yaml(after_doc)))
    table = Table.of(before)
    table.add_elements("block_v4", [BAN])
    commands = transaction(after, Observed.from_listing(table.listing()))
    for verb in ("delete", "flush"):
        touched = {next(iter(c[verb].values()))["name"] for c in commands if verb in c}
        assert not touched & n.DYNAMIC_SET_NAMES
    table.apply(commands)
    assert table.static() == Table.of(after).static()
    assert table.elements("block_v4") == [BAN]
    assert not plan(after, Observed.from_listing(table.listing())).changed
