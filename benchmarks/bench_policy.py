"""Cases 1 and 2: parse, compile and apply a whole policy, against `nft -f` and libnftables.

Owns: the outer side (write the changed variant, get the nft text, run the inner side in a
fresh `afwb-` namespace) and the inner side (`--inner`, run by `ip netns exec`): every
measurement in-process with one long-lived `Nft()`, printed as one JSON result line.

Measured, each `reps` times, alternating between the policy and a copy with one extra rule
so that every reload changes the ruleset: parse (read + YAML + validate), compile and a
re-apply `Nft.apply` into the populated table, split into its `observe` listing and its
transaction (`TimedNft`); the daemon's reload (compile, then `Nft.run` of
`reconcile.delta(previous, desired)`, no listing), checked afterwards with `plan`. Then
compile + first apply into an empty namespace (our table deleted, untimed, before each
run) and `Nft()` creation. Baselines on the same ruleset: `nft -f FILE` into the empty
namespace (includes the nft process start-up), `nft -f` of an empty file (that start-up
alone), `nft -f` delete-and-reload of the table, libnftables `json_cmd` of the compiled
JSON and `cmd` of the nft text. Also a first compile with nothing memoised
(`compiler.clear_memo()` before each).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import Ruleset, clear_memo, compile_policy
from aitherfwd.nft import names as n
from aitherfwd.policy.model import Policy
from aitherfwd.reconcile import delta, plan
from benchmarks import nfttext
from benchmarks.netns import BenchError, emit, namespace, require_own_namespace, run_inner
from benchmarks.policygen import with_extra_rule
from benchmarks.stats import measure
from benchmarks.timednft import TimedNft

MODULE = "benchmarks.bench_policy"


# --- outer: runs in the root namespace, touches no firewall ----------------------------------


def run_case(policy: Path, reps: int, *, warmup: int, timeout: float) -> dict[str, Any]:
    """Benchmark `policy` in a fresh namespace; the inner side's samples and facts."""
    with tempfile.TemporaryDirectory(prefix="afwb-") as tmp:
        work = Path(tmp)
        changed = work / "changed.yaml"
        changed.write_text(with_extra_rule(policy.read_text()))
        text = nfttext.loadable(nfttext.render(policy))
        files = {
            "nft-text": text.text,
            "nft-replace": nfttext.atomic_replace(text.text),
            "nft-empty": "",
        }
        for name, content in files.items():
            (work / f"{name}.nft").write_text(content)
        args = ["--policy", str(policy), "--changed", str(changed), "--reps", str(reps)]
        args += ["--warmup", str(warmup)]
        args += [a for name in files for a in (f"--{name}", str(work / f"{name}.nft"))]
        with namespace() as ns:
            result = run_inner(ns, MODULE, args, timeout=timeout)
        result["info"]["nft_text_edits"] = list(text.edits)
        result["info"]["nft_text_lines"] = text.text.count("\n")
        return result


# --- inner: runs inside the benchmark namespace ----------------------------------------------


def _inner(opts: argparse.Namespace) -> dict[str, Any]:
    require_own_namespace(opts.netns)
    import nftables  # noqa: PLC0415  (raw libnftables, the baseline: inner side only)

    reps: int = opts.reps
    warm: int = opts.warmup
    paths = [Path(opts.policy), Path(opts.changed)]

    def parse(path: Path) -> Policy:
        result = load_policy(path)
        if result.policy is None:
            raise BenchError(f"{path} is not a valid policy")
        return result.policy

    rulesets: list[Ruleset] = [compile_policy(parse(p)) for p in paths]
    nft = TimedNft()
    raw = nftables.Nftables()
    raw.set_json_output(True)
    samples: dict[str, list[float]] = {}

    def reset(_: int = 0) -> None:
        """Delete our table (cheaper than `Nft.delete_table`, which lists it first)."""
        rc, _out, err = raw.cmd(f"delete table {n.FAMILY} {n.TABLE}")
        if rc != 0 and nft.observe().exists:
            raise BenchError(f"cannot delete our table: {err.strip()}")

    def check(rc_out_err: tuple[int, Any, str], what: str) -> None:
        if rc_out_err[0] != 0:
            raise BenchError(f"{what} failed: {rc_out_err[2].strip()[:500]}")

    def nft_file(path: str) -> None:
        proc = subprocess.run(
            ["nft", "-f", path], capture_output=True, text=True, check=False, timeout=120
        )
        if proc.returncode != 0:
            raise BenchError(f"nft -f {path} failed: {proc.stderr.strip()[:500]}")

    # Reload loop: parse, compile and re-apply, each iteration changing the ruleset.
    nft.apply(rulesets[0])
    applied = [0]  # index of the policy the table holds now
    keys = ("parse", "compile", "reapply", "reapply_observe", "reapply_tx")
    stages: dict[str, list[float]] = {key: [] for key in keys}

    def reload(i: int) -> None:
        applied[0] = 1 - applied[0]
        t0 = time.perf_counter_ns()
        policy = parse(paths[applied[0]])
        t1 = time.perf_counter_ns()
        ruleset = compile_policy(policy)
        t2 = time.perf_counter_ns()
        nft.apply(ruleset)
        t3 = time.perf_counter_ns()
        if i >= 0:  # not a warm-up call
            for key, start, end in (("parse", t0, t1), ("compile", t1, t2), ("reapply", t2, t3)):
                stages[key].append((end - start) / 1e6)
            stages["reapply_observe"].append(nft.last["observe"])
            stages["reapply_tx"].append(nft.last["run"])

    measure(reload, reps, warmup=warm + 1)
    samples.update(stages)

    # A first compile in a process: nothing memoised yet (the reloads above reuse the
    # kernel rules of every rule that did not change).
    cold_policy = parse(paths[0])

    def compile_cold(_: int) -> None:
        compile_policy(cold_policy)

    samples["compile_cold"] = measure(compile_cold, reps, warmup=warm, setup=lambda _: clear_memo())

    # The daemon's reload: only what changed since the ruleset it applied last, no listing.
    policies = [parse(p) for p in paths]
    held = [rulesets[applied[0]]]
    daemon: dict[str, list[float]] = {"delta_compile": [], "delta_run": []}

    def reload_delta(i: int) -> None:
        applied[0] = 1 - applied[0]
        t0 = time.perf_counter_ns()
        ruleset = compile_policy(policies[applied[0]])
        t1 = time.perf_counter_ns()
        nft.run(delta(held[0], ruleset))
        t2 = time.perf_counter_ns()
        held[0] = ruleset
        if i >= 0:
            daemon["delta_compile"].append((t1 - t0) / 1e6)
            daemon["delta_run"].append((t2 - t1) / 1e6)

    measure(reload_delta, reps, warmup=warm + 1)
    samples.update(daemon)
    delta_consistent = not plan(held[0], nft.observe()).changed
    samples["context"] = measure(lambda _: Nft(), reps, warmup=warm)

    # Fresh loads into the empty namespace (our table deleted before each, untimed).
    base_policy = parse(paths[0])
    first: dict[str, list[float]] = {"first_compile": [], "first_apply": []}

    def first_apply(i: int) -> None:
        t0 = time.perf_counter_ns()
        ruleset = compile_policy(base_policy)
        t1 = time.perf_counter_ns()
        nft.apply(ruleset)
        t2 = time.perf_counter_ns()
        if i >= 0:
            first["first_compile"].append((t1 - t0) / 1e6)
            first["first_apply"].append((t2 - t1) / 1e6)

    measure(first_apply, reps, warmup=warm, setup=reset)
    samples.update(first)
    payload = rulesets[0].to_json()
    samples["json_cmd"] = measure(
        lambda _: check(raw.json_cmd(payload), "json_cmd"), reps, warmup=warm, setup=reset
    )
    text = Path(opts.nft_text).read_text()
    text_ctx = nftables.Nftables()
    samples["cmd_text"] = measure(
        lambda _: check(text_ctx.cmd(text), "cmd(text)"), reps, warmup=warm, setup=reset
    )
    samples["nft_f"] = measure(lambda _: nft_file(opts.nft_text), reps, warmup=warm, setup=reset)
    relisted = text_ctx.cmd("list table inet aitherfwd")[1]
    samples["nft_f_empty"] = measure(lambda _: nft_file(opts.nft_empty), reps, warmup=warm)
    samples["nft_f_replace"] = measure(lambda _: nft_file(opts.nft_replace), reps, warmup=warm)
    reset()

    kinds = [next(iter(o)) for o in rulesets[0].objects]
    diff = _line_diff(text, relisted)
    info = {
        "kernel_rules": kinds.count("rule"),
        "objects": len(kinds),
        "sets": kinds.count("set") + kinds.count("map"),
        "anonymous_sets": _anonymous_sets(rulesets[0].objects),
        "shared_sets": sum(1 for s in rulesets[0].names("set") if n.is_shared_set(s)),
        "rule_chains": sum(1 for c in rulesets[0].names("chain") if c.startswith("r_")),
        "policy_rules": len(base_policy.rules),
        "nft_f_relist_diff_lines": diff,
        "delta_consistent": delta_consistent,
    }
    return {"samples": samples, "info": info}


def _anonymous_sets(objects: tuple[dict[str, Any], ...]) -> int:
    """Anonymous sets the kernel creates for the rules: one per `{"set": [...]}` value."""
    count = 0

    def walk(node: Any) -> None:
        nonlocal count
        if isinstance(node, dict):
            if isinstance(node.get("set"), list):
                count += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for obj in objects:
        if "rule" in obj:
            walk(obj["rule"]["expr"])
    return count


def _line_diff(expected: str, actual: str) -> int:
    """Lines that differ between the text loaded with `nft -f` and the kernel's listing of
    it (0: the baseline loaded exactly what aitherfwd's rendering shows)."""
    a, b = expected.splitlines(), actual.splitlines()
    return sum(1 for x, y in zip(a, b, strict=False) if x != y) + abs(len(a) - len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="inner side of benchmarks.bench_policy")
    parser.add_argument("--inner", action="store_true", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--changed", required=True)
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--nft-text", required=True)
    parser.add_argument("--nft-replace", required=True)
    parser.add_argument("--nft-empty", required=True)
    emit(_inner(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
