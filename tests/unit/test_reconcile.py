"""`reconcile`: the plan, the one-batch transaction and the delta between generations, checked
against hand-built `Observed` values and a model of the kernel's table (tests/unit/nftsim.py):
what changes is exactly what the policy changed, the dynamic sets — every ban and sandbox
grant — are never deleted or flushed, and drift is repaired."""

from __future__ import annotations

from typing import Any

import pytest

from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.nft import names as n
from aitherfwd.reconcile import Observed, delta, plan, transaction
from tests.unit.helpers import ok, parse
from tests.unit.nftsim import Refused, Table

RULES = """\
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
  - {name: web, zone: external, dest_services: [Bastion], rate_limit_rps: 5, action: allow}
  - {name: secrets, zone: internal, dest_services: [Secrets], action: allow}
  - {name: dns, zone: [internal, loopback], dest_services: [DNS], action: allow}
"""
BAN_V4 = {"elem": {"val": "198.51.100.7", "timeout": 900}}
BAN_NET = {"elem": {"val": {"prefix": {"addr": "203.0.113.0", "len": 24}}, "timeout": 900}}


def _compile(text: str = RULES) -> Ruleset:
    return compile_policy(ok(text))


def _observed(rs: Ruleset, *, without: tuple[str, ...] = (), meters: bool = True) -> Observed:
    """`rs` as the kernel lists it, built by hand: sets that rules update carry the kernel's
    `dynamic` flag; objects named in `without` are missing (drift)."""
    chains, maps, counters, rules = [], [], [], []
    sets: dict[str, tuple[str, tuple[str, ...]]] = {}
    for obj in rs.objects:
        ((kind, body),) = obj.items()
        name = body.get("name")
        if name in without:
            continue
        if kind == "chain":
            chains.append(name)
        elif kind == "set":
            flags = set(body.get("flags", []))
            if meters and name.startswith(("rl_", "connlimit_", "synrate_")):
                flags.add("dynamic")
            sets[name] = (str(body["type"]), tuple(sorted(flags)))
        elif kind == "map":
            maps.append(name)
        elif kind == "counter":
            counters.append(name)
        elif kind == "rule" and body["chain"] not in without:
            rules.append((body["chain"], body["comment"]))
    return Observed(True, tuple(chains), sets, tuple(maps), tuple(counters), tuple(rules))


def _touching(commands: list[dict[str, Any]], verb: str, kind: str) -> list[str]:
    return [c[verb][kind]["name"] for c in commands if verb in c and kind in c[verb]]


def _added(commands: list[dict[str, Any]], kind: str) -> list[str]:
    return [c["add"][kind]["name"] for c in commands if kind in c.get("add", {})]


def _added_rules(commands: list[dict[str, Any]]) -> set[str]:
    return {c["add"]["rule"]["chain"] for c in commands if "rule" in c.get("add", {})}


def _with_bans(rs: Ruleset) -> Table:
    table = Table.of(rs)
    table.add_elements("block_v4", [BAN_V4])
    table.add_elements("block_v4_net", [BAN_NET])
    return table


# --- plan ------------------------------------------------------------------------------------


def test_an_unchanged_ruleset_plans_no_change() -> None:
    rs = _compile()
    result = plan(rs, _observed(rs))
    assert not result.changed
    assert result.render() == "no changes\n"
    # the kernel's own listing says the same
    assert not plan(rs, Observed.from_listing(Table.of(rs).listing())).changed


def test_a_missing_table_plans_the_table_and_every_object() -> None:
    rs = _compile()
    result = plan(rs, Observed(exists=False))
    assert result.removed == []
    assert "table inet aitherfwd" in result.added
    for kind in ("chain", "set", "map", "counter"):
        for name in rs.names(kind):
            assert f"{kind} {name}" in result.added
    assert f"set {n.BLOCK_SETS[0].name}" in result.added
    assert result.render().endswith(f"\n{len(result.added)} to add, 0 to remove\n")


def test_a_changed_rule_is_planned_in_its_chain_only() -> None:
    before = _compile()
    after = _compile(RULES.replace("dest_services: [Secrets]", "dest_ports: [8112], protocol: tcp"))
    result = plan(after, _observed(before))
    assert result.changed
    assert result.added and len(result.added) == len(result.removed)
    for line in result.added + result.removed:
        assert line.startswith("rule r_secrets: secrets #"), line


def test_a_changed_zone_shows_as_new_zone_map_contents() -> None:
    before, after = _zones_policy(lab="10.77.0.0/16"), _zones_policy(lab="10.77.0.0/17")
    result = plan(after, _observed(before))
    assert [x.split(" #")[0] for x in result.added] == ["map zone_v4 contents"]
    assert [x.split(" #")[0] for x in result.removed] == ["map zone_v4 contents"]


def test_a_policy_differing_only_in_comments_plans_no_change() -> None:
    before = _compile()
    after = _compile("# a comment changes the policy hash, not the ruleset\n" + RULES)
    assert after.policy_sha256 != before.policy_sha256
    assert after.sha256 == before.sha256
    assert not plan(after, _observed(before)).changed


def test_plan_reports_rules_someone_else_added_to_our_chains_as_removals() -> None:
    rs = _compile()
    drifted = _observed(rs)
    foreign = Observed(
        True,
        drifted.chains,
        drifted.sets,
        drifted.maps,
        drifted.counters,
        (*drifted.rules, ("input", "added by hand")),
    )
    result = plan(rs, foreign)
    assert result.added == []
    assert result.removed == ["rule input: added by hand"]


# --- transaction -----------------------------------------------------------------------------


def test_a_missing_table_transaction_creates_everything_in_dependency_order() -> None:
    rs = _compile()
    commands = transaction(rs, Observed(exists=False))
    assert commands == rs.commands()
    assert commands[0] == {"add": {"table": {"family": "inet", "name": "aitherfwd"}}}
    assert not any("delete" in c or "flush" in c for c in commands)
    table = Table()
    table.apply(commands)  # the model refuses a reference to an object not yet added
    assert table.static() == Table.of(rs).static()


def test_a_transaction_never_deletes_or_flushes_the_dynamic_sets() -> None:
    before, after = _compile(), _compile("rules: []\n")
    odd = _observed(before)
    # even a dynamic set whose flags look wrong is left alone: its elements are live bans
    odd.sets["block_v4"] = ("ipv4_addr", ("interval", "timeout"))
    for observed in (_observed(before), odd):
        commands = transaction(after, observed)
        for verb in ("delete", "flush"):
            assert not set(_touching(commands, verb, "set")) & n.DYNAMIC_SET_NAMES
        assert set(_added(commands, "set")) >= n.DYNAMIC_SET_NAMES  # idempotent re-add


def test_a_transaction_keeps_the_meters_the_kernel_marked_dynamic() -> None:
    rs = _compile()
    commands = transaction(rs, _observed(rs))
    meters = [s for s in rs.names("set") if s.startswith("rl_web_")]
    assert len(meters) == 2
    for name in meters:
        assert name not in _touching(commands, "delete", "set")
        assert name not in _added(commands, "set")  # an identical add would be refused


def test_a_transaction_replaces_a_static_set_whose_definition_changed() -> None:
    rs = _compile()
    observed = _observed(rs)
    observed.sets["rl_web_v4_5r5"] = ("ipv4_addr", ("dynamic", "interval", "timeout"))
    commands = transaction(rs, observed)
    deleted = _touching(commands, "delete", "set")
    assert [s for s in deleted if not n.is_shared_set(s)] == ["rl_web_v4_5r5"]
    assert "rl_web_v4_5r5" in _added(commands, "set")


def test_shared_sets_are_recreated_with_their_elements_never_refilled_by_element_commands() -> None:
    """An element command makes libnftables fetch every element in the namespace first
    (seconds with a large country set loaded): a kept shared set is deleted and re-added
    with its elements instead (the chains referring to it are flushed before)."""
    rs = _compile()
    commands = transaction(rs, _observed(rs))
    shared = [s for s in rs.names("set") if n.is_shared_set(s)]
    assert shared and set(shared) <= set(_touching(commands, "delete", "set"))
    assert set(shared) <= set(_added(commands, "set"))
    assert not any("element" in next(iter(c.values())) for c in commands)
    assert not _touching(commands, "flush", "set")


def test_a_transaction_flushes_every_chain_and_deletes_what_the_policy_dropped() -> None:
    before = _compile()
    after = _compile(RULES.replace("  - {name: dns, zone: [internal, loopback]", "  - {name: dn2"))
    commands = transaction(after, _observed(before))
    assert set(_touching(commands, "flush", "chain")) == set(before.names("chain"))
    assert _touching(commands, "delete", "counter") == ["rule_dns"]
    assert "rule_dn2" in _added(commands, "counter")
    assert _touching(commands, "delete", "map") == [n.ZONE_MAP_V4, n.ZONE_MAP_V6]
    assert _touching(commands, "delete", "chain") == ["r_dns"]  # the rule's chain went with it
    assert "r_dn2" in _added(commands, "chain")


def test_a_transaction_removes_a_chain_someone_added_to_our_table() -> None:
    rs = _compile()
    seen = _observed(rs)
    extra = Observed(True, (*seen.chains, "intruder"), seen.sets, seen.maps, seen.counters)
    commands = transaction(rs, extra)
    assert "intruder" in _touching(commands, "flush", "chain")
    assert _touching(commands, "delete", "chain") == ["intruder"]


@pytest.mark.parametrize("missing", ["zone_internal", "block_v4", n.ZONE_MAP_V6, "rule_web"])
def test_observed_drift_of_a_missing_object_is_repaired(missing: str) -> None:
    rs = _compile()
    commands = transaction(rs, _observed(rs, without=(missing,)))
    kind = next(k for o in rs.objects for k, b in o.items() if b.get("name") == missing)
    assert missing in _added(commands, kind)
    assert not plan(rs, _observed(rs)).changed
    assert f"{kind} {missing}" in plan(rs, _observed(rs, without=(missing,))).added


def test_a_reapplied_transaction_keeps_every_ban_and_counter() -> None:
    rs = _compile()
    table = _with_bans(rs)
    counters = {c: table.serial("counter", c) for c in rs.names("counter")}
    table.apply(transaction(rs, Observed.from_listing(table.listing())))
    assert table.static() == Table.of(rs).static()
    assert table.elements("block_v4") == [BAN_V4]
    assert table.elements("block_v4_net") == [BAN_NET]
    assert {c: table.serial("counter", c) for c in counters} == counters


def test_a_transaction_to_another_policy_reaches_it_and_keeps_the_bans() -> None:
    before = _compile()
    after = _compile(
        RULES.replace("rate_limit_rps: 5", "rate_limit_rps: 7").replace("[22]", "[2222]")
    )
    table = _with_bans(before)
    table.apply(transaction(after, Observed.from_listing(table.listing())))
    assert table.static() == Table.of(after).static()
    assert table.elements("block_v4") == [BAN_V4]
    assert not plan(after, Observed.from_listing(table.listing())).changed


def test_a_transaction_repairs_a_table_someone_flushed_and_edited() -> None:
    rs = _compile()
    table = _with_bans(rs)
    table.apply(
        [{"flush": {"chain": {"name": c}}} for c in rs.names("chain")]
        + [{"delete": {"map": {"name": n.ZONE_MAP_V4}}}, {"delete": {"chain": {"name": "nozone"}}}]
    )
    assert plan(rs, Observed.from_listing(table.listing())).changed
    table.apply(transaction(rs, Observed.from_listing(table.listing())))
    assert table.static() == Table.of(rs).static()
    assert table.elements("block_v4") == [BAN_V4]


# --- delta -----------------------------------------------------------------------------------


def test_the_delta_of_an_unchanged_ruleset_is_empty() -> None:
    assert delta(_compile(), _compile()) == []


def test_a_new_policy_hash_alone_refills_only_the_hash_chain() -> None:
    before, after = _compile(), _compile("# comment only\n" + RULES)
    commands = delta(before, after)
    assert _touching(commands, "flush", "chain") == [n.META_CHAIN]
    assert _added_rules(commands) == {n.META_CHAIN}
    table = Table.of(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()


def test_a_changed_rule_refills_only_its_chain() -> None:
    before = _compile()
    after = _compile(
        RULES.replace("dest_services: [Secrets]", "dest_ports: [8112, 8114], protocol: tcp")
    )
    commands = delta(before, after)
    # the hash chain records the new ruleset's hash: it is refilled with every change
    assert _touching(commands, "flush", "chain") == [n.META_CHAIN, "r_secrets"]
    assert _added_rules(commands) == {n.META_CHAIN, "r_secrets"}
    (ports,) = _added(commands, "set")  # the new port list, a set named by its contents
    assert n.is_shared_set(ports)
    assert not any("delete" in c for c in commands)
    assert _added(commands, "chain") == []
    table = _with_bans(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()
    back = delta(after, before)  # the set only this rule used goes with the change
    assert _touching(back, "flush", "chain") == [n.META_CHAIN, "r_secrets"]
    assert [c for c in back if "delete" in c] == [
        {"delete": {"set": {"family": n.FAMILY, "table": n.TABLE, "name": ports}}}
    ]
    table.apply(back)
    assert table.static() == Table.of(before).static()
    assert table.elements("block_v4") == [BAN_V4]


def test_a_changed_zone_less_rule_refills_its_one_chain_not_every_zone() -> None:
    before = _compile()
    after = _compile(RULES.replace("dest_ports: [22]", "dest_ports: [22, 2222]"))
    commands = delta(before, after)
    assert _touching(commands, "flush", "chain") == [n.META_CHAIN, "r_ssh"]
    assert _added_rules(commands) == {n.META_CHAIN, "r_ssh"}
    (new_set,) = _added(commands, "set")
    assert n.is_shared_set(new_set)
    assert _touching(commands, "delete", "set") == []  # port 22 alone needed no set
    table = _with_bans(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()


def test_a_new_rule_gets_its_chain_and_a_jump_in_its_zone_only() -> None:
    before = _compile()
    after = _compile(RULES + "  - {name: extra, zone: loopback, dest_ports: [7], action: deny}\n")
    commands = delta(before, after)
    assert _added(commands, "chain") == ["r_extra"]
    assert _added(commands, "counter") == ["rule_extra"]
    assert _touching(commands, "flush", "chain") == [n.META_CHAIN, "zone_loopback"]
    assert _added_rules(commands) == {n.META_CHAIN, "zone_loopback", "r_extra"}
    table = _with_bans(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()
    back = delta(after, before)
    assert _touching(back, "delete", "chain") == ["r_extra"]
    table.apply(back)
    assert table.static() == Table.of(before).static()
    assert table.elements("block_v4") == [BAN_V4]


def test_a_set_shared_by_two_rules_stays_while_one_of_them_does() -> None:
    text = RULES + "  - {name: web2, zone: internal, dest_ports: [80, 443], action: allow}\n"
    text += "  - {name: web3, zone: loopback, dest_ports: [80, 443], action: allow}\n"
    before = _compile(text)
    after = _compile(
        text.replace("  - {name: web3, zone: loopback, dest_ports: [80, 443], action: allow}\n", "")
    )
    commands = delta(before, after)
    assert _touching(commands, "delete", "set") == []  # web2 still uses {80, 443}
    assert _touching(commands, "delete", "chain") == ["r_web3"]
    table = _with_bans(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()


def test_a_changed_rule_leaves_other_chains_and_the_bans_in_place() -> None:
    before = _compile()
    after = _compile(RULES.replace("dest_services: [Secrets]", "dest_ports: [8112], protocol: tcp"))
    table = _with_bans(before)
    changed = ("r_secrets", n.META_CHAIN)
    kept = {c: table.handles(c) for c in before.names("chain") if c not in changed}
    table.apply(delta(before, after))
    assert table.static() == Table.of(after).static()
    assert {c: table.handles(c) for c in kept} == kept
    assert table.elements("block_v4") == [BAN_V4]


def test_a_changed_rate_limit_swaps_its_meter_sets() -> None:
    before = _compile()
    after = _compile(RULES.replace("rate_limit_rps: 5", "rate_limit_rps: 7"))
    commands = delta(before, after)
    assert sorted(_touching(commands, "delete", "set")) == ["rl_web_v4_5r5", "rl_web_v6_5r5"]
    assert sorted(_added(commands, "set")) == ["rl_web_v4_7r7", "rl_web_v6_7r7"]
    table = Table.of(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()


def test_a_new_zone_gets_its_chain_and_the_zone_maps_are_refilled() -> None:
    before, after = _zones_policy(lab=None), _zones_policy(lab="10.77.0.0/16")
    commands = delta(before, after)
    assert _added(commands, "chain") == ["zone_lab", "r_lab_all"]
    # re-created with their elements (no element command: see reconcile.delta), the input
    # chain that looks them up refilled with them
    assert _touching(commands, "delete", "map") == [n.ZONE_MAP_V4, n.ZONE_MAP_V6]
    assert {n.ZONE_MAP_V4, n.ZONE_MAP_V6} <= set(_added(commands, "map"))
    assert not any("element" in next(iter(c.values())) for c in commands)
    assert n.INPUT_CHAIN in _touching(commands, "flush", "chain")
    assert "zone_lab" in _added_rules(commands)
    table = Table.of(before)
    table.apply(commands)
    assert table.static() == Table.of(after).static()


def test_a_removed_zone_is_unhooked_from_the_maps_before_its_chain_goes() -> None:
    with_lab = _zones_policy(lab="10.77.0.0/16")
    without = _zones_policy(lab=None)
    commands = delta(with_lab, without)
    order = [next(iter(c)) + " " + next(iter(next(iter(c.values())))) for c in commands]
    assert _touching(commands, "delete", "chain") == ["r_lab_all", "zone_lab"]
    assert order.index("delete map") < order.index("delete chain")
    table = Table.of(with_lab)
    table.apply(commands)
    assert table.static() == Table.of(without).static()
    back = Table.of(without)
    back.apply(delta(without, with_lab))
    assert back.static() == Table.of(with_lab).static()


def test_a_delta_never_deletes_a_dynamic_set_even_if_its_definition_differs() -> None:
    rs = _compile()
    odd = tuple(
        {"set": {**o["set"], "flags": ["interval", "timeout"]}}
        if "set" in o and o["set"]["name"] == "block_v4"
        else o
        for o in rs.objects
    )
    previous = Ruleset(odd, "x", "y")
    commands = delta(previous, rs)
    assert not set(_touching(commands, "delete", "set")) & n.DYNAMIC_SET_NAMES
    assert not set(_touching(commands, "flush", "set")) & n.DYNAMIC_SET_NAMES


def test_a_delta_against_a_drifted_kernel_is_refused_as_a_whole() -> None:
    before = _compile()
    after = _compile(RULES.replace("dest_services: [Secrets]", "dest_ports: [8112], protocol: tcp"))
    table = _with_bans(before)
    drift = [{"flush": {"chain": {"name": c}}} for c in before.names("chain")]
    drift += [{"flush": {"map": {"name": m}}} for m in (n.ZONE_MAP_V4, n.ZONE_MAP_V6)]
    table.apply([*drift, {"delete": {"chain": {"name": "r_secrets"}}}])
    snapshot = table.static()
    with pytest.raises(Refused):
        table.apply(delta(before, after))
    assert table.static() == snapshot  # nothing half-applied; the caller falls back
    table.apply(transaction(after, Observed.from_listing(table.listing())))
    assert table.static() == Table.of(after).static()


def _zones_policy(*, lab: str | None) -> Ruleset:
    """A zone `lab` (with one rule of its own) before the catch-all zone, or no such zone."""
    zone = f'  - {{name: lab, cidrs: [{lab}, "fd77::/64"]}}\n' if lab else ""
    rule = "  - {name: lab_all, zone: lab, action: allow}\n" if lab else ""
    text = (
        f"version: 1\nzones:\n{zone}"
        '  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}\n'
        f"rules:\n{rule}"
        "  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}\n"
    )
    result = parse(text, base=False)
    assert result.policy is not None, [d.render() for d in result.diagnostics]
    return compile_policy(result.policy)


def test_naively_re_adding_the_ruleset_is_refused_which_is_why_transaction_exists() -> None:
    rs = _compile()
    table = _with_bans(rs)
    with pytest.raises(Refused, match="exists with another definition"):
        table.apply(rs.commands())  # the meters now carry the kernel's `dynamic` flag
    assert table.elements("block_v4") == [BAN_V4]
