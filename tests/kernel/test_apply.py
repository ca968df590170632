"""`apply` against the real kernel: one transaction, dynamic elements kept, nothing
half-applied, `plan` accurate, and the table confined to the namespace it was applied in."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.errors import ApplyError
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.reconcile import delta, plan, transaction
from lab import AITHERFWD, ROOT, netns
from lab.netns import inside

pytestmark = pytest.mark.kernel


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace(loopback=False) as name:
        yield name


def _policy(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


POLICY_A = """\
version: 1
zones:
  - {name: lan, cidrs: [10.77.0.0/16, "fd77::/16"]}
  - {name: world, cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: ssh, dest_ports: [22], protocol: tcp, action: allow}
  - {name: web, zone: world, dest_ports: [443], protocol: tcp, rate_limit_rps: 5, action: allow}
"""
POLICY_B = POLICY_A.replace("[443]", "[443, 8443]").replace(
    "  - {name: ssh", "  - {name: dns, zone: lan, dest_ports: [53], action: allow}\n  - {name: ssh"
)


def _compile(path: Path) -> Ruleset:
    result = load_policy(path)
    assert result.policy is not None
    return compile_policy(result.policy)


def _table_json(nft: Nft) -> str:
    return json.dumps(nft.list_table(terse=False), sort_keys=True)


def test_reapply_keeps_every_dynamic_element_with_its_remaining_timeout(
    ns: str, tmp_path: Path
) -> None:
    a, bb = _compile(_policy(tmp_path, POLICY_A)), _compile(_policy(tmp_path, POLICY_B, "b.yaml"))
    v4 = [str(ipaddress.IPv4Address(0x0A4D0000 + i)) for i in range(1, 501)]
    with inside(ns):
        nft = Nft()
        nft.apply(a)
        nft.run(
            [
                b.add(b.element("block_v4", [b.timed(ip, 3600) for ip in v4])),
                b.add(b.element("block_v6", [b.timed("fd77::99", 600)])),
                b.add(b.element("block_v4_net", [b.timed(b.prefix("10.77.200.0", 24), 900)])),
                b.add(b.element("sandbox_v4", ["10.77.3.3"])),  # no timeout: permanent
                b.add(b.element("sandbox_v6_net", [b.timed(b.prefix("fd77:0:0:5::", 64), 120)])),
            ]
        )
        nft.apply(bb)  # a changed policy
        nft.apply(a)  # and back
        after = {
            s: nft.set_elements(s)
            for s in ("block_v4", "block_v6", "block_v4_net", "sandbox_v4", "sandbox_v6_net")
        }
        assert nft.observe().ruleset_sha256 == a.sha256
    kept = {e["elem"]["val"]: e["elem"] for e in after["block_v4"]}
    assert set(kept) == set(v4)
    assert all(0 < e["expires"] <= 3600 and e["timeout"] == 3600 for e in kept.values())
    assert after["block_v6"][0]["elem"]["val"] == "fd77::99"
    assert after["block_v4_net"][0]["elem"]["val"] == {"prefix": {"addr": "10.77.200.0", "len": 24}}
    assert after["sandbox_v4"] == ["10.77.3.3"]
    assert after["sandbox_v6_net"][0]["elem"]["expires"] <= 120


def test_a_transaction_the_kernel_refuses_changes_nothing(ns: str, tmp_path: Path) -> None:
    good = _compile(_policy(tmp_path, POLICY_A))
    changed = _compile(_policy(tmp_path, POLICY_B, "b.yaml"))
    broken_rule = b.rule("zone_world", [b.goto("no_such_chain")], "broken")
    broken = Ruleset((*changed.objects, broken_rule), "broken", "broken")
    with inside(ns):
        nft = Nft()
        nft.apply(good)
        nft.add_elements("block_v4", [b.timed("10.77.9.9", 3600)])
        before = json.dumps(nft.list_table(terse=True), sort_keys=True)
        with pytest.raises(ApplyError) as info:
            nft.apply(broken)
        after = json.dumps(nft.list_table(terse=True), sort_keys=True)
        elements = nft.set_elements("block_v4")
    assert info.value.code == "E-APPLY" and info.value.message
    assert after == before
    assert [e["elem"]["val"] for e in elements] == ["10.77.9.9"]


def test_plan_reports_changes_then_none_after_apply(ns: str, tmp_path: Path) -> None:
    a, bb = _compile(_policy(tmp_path, POLICY_A)), _compile(_policy(tmp_path, POLICY_B, "b.yaml"))
    with inside(ns):
        nft = Nft()
        first = plan(a, nft.observe())
        nft.apply(a)
        same = plan(a, nft.observe())
        diff = plan(bb, nft.observe())
    assert first.changed and "table inet aitherfwd" in first.added
    assert not same.changed and same.render() == "no changes\n"
    assert any(x.startswith("counter rule_dns") for x in diff.added)
    # the changed port list changes the rule's own chain (and adds a shared set), not the
    # zone chain that jumps to it
    assert any("rule r_web: web" in x for x in diff.removed)
    assert any("rule r_web: web" in x for x in diff.added)
    assert any(x.startswith(f"set {n.SHARED_SET_PREFIX}ports_") for x in diff.added)
    assert not any("zone_world" in x for x in diff.added + diff.removed)


def test_a_one_rule_delta_is_accepted_and_a_flushed_shared_set_is_repaired(
    ns: str, tmp_path: Path
) -> None:
    a, bb = _compile(_policy(tmp_path, POLICY_A)), _compile(_policy(tmp_path, POLICY_B, "b.yaml"))
    (ports,) = [s for s in bb.names("set") if s.startswith(f"{n.SHARED_SET_PREFIX}ports_")]
    with inside(ns):
        nft = Nft()
        nft.apply(a)
        nft.run(delta(a, bb))
        assert not plan(bb, nft.observe()).changed
        assert sorted(nft.set_elements(ports)) == [443, 8443]
        nft.run([{"flush": {"set": {"family": n.FAMILY, "table": n.TABLE, "name": ports}}}])
        assert nft.set_elements(ports) == []
        nft.run(transaction(bb, nft.observe()))  # what drift repair runs
        assert sorted(nft.set_elements(ports)) == [443, 8443]
        nft.run(delta(bb, a))  # and back: the set only `web` used goes
        assert not plan(a, nft.observe()).changed
        assert ports not in nft.observe().sets


def test_zone_change_shows_up_in_plan_as_the_zone_map(ns: str, tmp_path: Path) -> None:
    a = _compile(_policy(tmp_path, POLICY_A))
    moved = _compile(_policy(tmp_path, POLICY_A.replace("10.77.0.0/16", "10.78.0.0/16"), "m.yaml"))
    with inside(ns):
        nft = Nft()
        nft.apply(a)
        diff = plan(moved, nft.observe())
    assert [x.split(" #")[0] for x in diff.added] == ["map zone_v4 contents"]


def _cli(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, AITHERFWD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_apply_plan_and_exit_codes(ns: str, tmp_path: Path) -> None:
    pa, pb = _policy(tmp_path, POLICY_A), _policy(tmp_path, POLICY_B, "b.yaml")
    assert _cli(ns, "plan", str(pa)).returncode == 2
    assert _cli(ns, "apply", str(pa)).returncode == 0
    assert _cli(ns, "plan", str(pa)).stdout == "no changes\n"
    assert _cli(ns, "plan", str(pa)).returncode == 0
    assert _cli(ns, "plan", str(pb)).returncode == 2
    bad = _policy(
        tmp_path, POLICY_A + "  - {name: x, dest_ports: [70000], action: allow}\n", "x.yaml"
    )
    res = _cli(ns, "apply", str(bad))
    assert res.returncode == 3 and "error[E-PORT-RANGE]" in res.stderr
    assert _cli(ns, "plan", str(pa)).returncode == 0  # the invalid policy changed nothing


def test_invalid_inputs_leave_the_kernel_table_byte_identical(ns: str, tmp_path: Path) -> None:
    pa = _policy(tmp_path, POLICY_A)
    assert _cli(ns, "apply", str(pa)).returncode == 0
    with inside(ns):
        before = _table_json(Nft())
    big = tmp_path / "big.yaml"
    big.write_text(POLICY_A + "#" + "x" * (10 * 1024 * 1024) + "\n")
    bad_inputs = {
        "malformed.yaml": "version: 1\nrules: [\n",
        "types.yaml": "version: 1\nrules: {name: r}\n",
        "unknown.yaml": POLICY_A + "extra: 1\n",
        "zones.yaml": POLICY_A.replace(
            "{name: lan, cidrs: [10.77.0.0/16",
            "{name: lan, cidrs: [10.77.0.0/16]}\n  - {name: lan2, cidrs: [10.77.1.0/24",
        )
        + "  - {name: y, zone: mars, action: allow}\n",
    }
    paths = [big] + [_policy(tmp_path, text, name) for name, text in bad_inputs.items()]
    for path in paths:
        res = _cli(ns, "apply", str(path))
        assert res.returncode == 3, (path.name, res.stderr)
        assert "error[" in res.stderr and res.stderr.strip().splitlines()[-1].endswith(
            ("warning", "warnings")
        ), res.stderr
    with inside(ns):
        assert _table_json(Nft()) == before


def test_table_is_confined_to_its_namespace(ns: str, tmp_path: Path) -> None:
    assert _cli(ns, "apply", str(_policy(tmp_path, POLICY_A))).returncode == 0
    root_tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert "aitherfwd" not in root_tables


def test_every_shipped_and_golden_policy_is_accepted_by_the_kernel(ns: str) -> None:
    paths = sorted((ROOT / "policies").glob("*.yaml")) + sorted(
        (ROOT / "tests" / "golden").glob("*/policy.yaml")
    )
    with inside(ns):
        nft = Nft()
        for path in paths:
            rs = _compile(path)
            nft.apply(rs)
            assert nft.observe().ruleset_sha256 == rs.sha256, path


def test_compile_format_nft_is_rendered_by_the_kernel_and_loads_back(ns: str) -> None:
    res = subprocess.run(
        [AITHERFWD, "compile", "--format", "nft", str(ROOT / "policies" / "default.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert res.stdout.startswith("table inet aitherfwd {")
    assert 'comment "ssh #' in res.stdout
    again = subprocess.run(
        [AITHERFWD, "compile", "--format", "nft", str(ROOT / "policies" / "default.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert again.stdout == res.stdout


def test_delta_from_the_previous_ruleset_reaches_the_same_kernel_state(
    ns: str, tmp_path: Path
) -> None:
    from aitherfwd.reconcile import delta  # noqa: PLC0415

    a = _compile(_policy(tmp_path, POLICY_A))
    bb = _compile(_policy(tmp_path, POLICY_B, "b.yaml"))
    zones = _compile(_policy(tmp_path, POLICY_A.replace("10.77.0.0/16", "10.78.0.0/16"), "z.yaml"))
    nozone = _compile(
        _policy(
            tmp_path,
            POLICY_A.replace('  - {name: lan, cidrs: [10.77.0.0/16, "fd77::/16"]}\n', ""),
            "n.yaml",
        )
    )
    with inside(ns):
        nft = Nft()
        nft.apply(a)
        nft.add_elements("block_v4", [b.timed("10.77.9.9", 3600)])
        nft.run([b.add(b.element("rl_web_v4_5r5", ["10.77.1.1"]))])
        counters_before = nft.counters()["rule_ssh"]
        steps = [(a, bb), (bb, zones), (zones, nozone), (nozone, a), (a, a)]
        for old, new in steps:
            nft.run(delta(old, new))
            assert not plan(new, nft.observe()).changed, (old.sha256[:8], new.sha256[:8])
        assert [e["elem"]["val"] for e in nft.set_elements("block_v4")] == ["10.77.9.9"]
        assert nft.counters()["rule_ssh"] == counters_before
    assert delta(a, a) == []


def test_nft_text_rendering_loads_back_into_the_same_table(ns: str) -> None:
    """What `compile --format nft` (and so `nft list ruleset`) prints must be loadable by
    nft itself — a saved ruleset with our table in it has to restore."""
    for path in sorted((ROOT / "policies").glob("*.yaml")) + sorted(
        (ROOT / "tests" / "golden").glob("*/policy.yaml")
    ):
        rs = _compile(path)
        text = subprocess.run(
            [AITHERFWD, "compile", "--format", "nft", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        with inside(ns):
            nft = Nft()
            nft.delete_table()
            ctx = nft._ctx  # loading text is exactly what is under test
            ctx.set_json_output(False)
            rc, _, err = ctx.cmd(text)
            ctx.set_json_output(True)
            assert rc == 0, (path.name, err)
            assert not plan(rs, nft.observe()).changed, path.name
