"""Case 3: re-apply a policy while `block_v4` holds many live elements with timeouts.

Owns: the outer side (nft text of the policy as a differently named table, run the inner
side in a fresh `afwb-` namespace) and the inner side (`--inner`): load N addresses with a
1 h timeout into `block_v4` in chunks through `Nft.run`, time `Nft.apply` of a changed
ruleset with them present (and without, as the reference), split into its `observe`
listing and its transaction (`TimedNft`), the same transaction with no listing before it,
and the daemon's reload (`Nft.run` of `reconcile.delta`, no listing); then list the set
ONCE, outside any timing, to check that every element survived with its timeout counting
down.

Baseline: `nft -f` cannot re-apply a whole table definition and keep elements (a fresh
table definition has empty sets), so it loads the same static ruleset as a fresh table
under another name (`afwb_fresh`) in the same namespace — without and then with the N
elements present in our table — and that table is deleted, untimed, after each run.
`nft -j -f` of the very batch `Nft.apply` sends is the CLI doing the same, element-keeping
re-apply.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from aitherfwd.adapters.files import load_policy
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import Ruleset, compile_policy
from aitherfwd.nft import builders as b
from aitherfwd.nft import names as n
from aitherfwd.reconcile import delta, transaction
from benchmarks import nfttext
from benchmarks.netns import BenchError, emit, namespace, require_own_namespace, run_inner
from benchmarks.policygen import with_extra_rule
from benchmarks.stats import clock_ms, measure, timed
from benchmarks.timednft import TimedNft

MODULE = "benchmarks.bench_elements"
SET_NAME = "block_v4"
TIMEOUT_S = 3600
FIRST_ADDRESS = ipaddress.IPv4Address("100.64.0.0")  # shared address space, 4 M addresses
FRESH_TABLE = "afwb_fresh"
NFT_TIMEOUT_S = 120
Json = b.Json


# --- outer: runs in the root namespace, touches no firewall ----------------------------------


def run_case(
    policy: Path, elements: int, chunk: int, reps: int, *, timeout: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="afwb-") as tmp:
        work = Path(tmp)
        changed = work / "changed.yaml"
        changed.write_text(with_extra_rule(policy.read_text()))
        text = nfttext.loadable(nfttext.render(policy))
        fresh = work / "fresh.nft"
        fresh.write_text(nfttext.as_table(text.text, FRESH_TABLE))
        args = [
            "--policy",
            str(policy),
            "--changed",
            str(changed),
            "--nft-fresh",
            str(fresh),
            "--elements",
            str(elements),
            "--chunk",
            str(chunk),
            "--reps",
            str(reps),
        ]
        with namespace() as ns:
            result = run_inner(ns, MODULE, args, timeout=timeout)
        result["info"]["nft_text_edits"] = list(text.edits)
        return result


# --- inner: runs inside the benchmark namespace ----------------------------------------------


def addresses(count: int) -> list[str]:
    """`count` distinct IPv4 addresses from 100.64.0.0 upwards."""
    first = int(FIRST_ADDRESS)
    return [str(ipaddress.IPv4Address(first + i)) for i in range(count)]


def _inner(opts: argparse.Namespace) -> dict[str, Any]:
    require_own_namespace(opts.netns)
    rulesets: list[Ruleset] = []
    for path in (opts.policy, opts.changed):
        policy = load_policy(Path(path)).policy
        if policy is None:
            raise BenchError(f"{path} is not a valid policy")
        rulesets.append(compile_policy(policy))
    nft = TimedNft()
    nft.apply(rulesets[0])
    applied = [0]  # which ruleset the table holds
    changes = [0]  # static-ruleset replacements made while the elements were present
    reps: int = opts.reps
    samples: dict[str, list[float]] = {}

    def flip() -> int:
        applied[0] = 1 - applied[0]
        changes[0] += 1
        return applied[0]

    def reapply_into(key: str) -> Callable[[int], None]:
        """A timed re-apply that also records its observe/transaction split under `key`."""
        samples[f"{key}_observe"], samples[f"{key}_tx"] = [], []

        def reapply(i: int) -> None:
            nft.apply(rulesets[flip()])
            if i >= 0:
                samples[f"{key}_observe"].append(nft.last["observe"])
                samples[f"{key}_tx"].append(nft.last["run"])

        return reapply

    def nft_fresh(_: int) -> None:
        _nft_cli(["-f", opts.nft_fresh])

    def run_batch(batches: list[list[Json]]) -> None:
        nft.run(batches[flip()])

    def drop_fresh(_: int = 0) -> None:
        subprocess.run(
            ["nft", "delete", "table", n.FAMILY, FRESH_TABLE],
            capture_output=True,
            check=False,
            timeout=NFT_TIMEOUT_S,
        )

    held = [rulesets[applied[0]]]

    def reload_delta(_: int) -> None:
        """The daemon's reload: only what changed since its last ruleset, no listing."""
        target = flip()
        nft.run(delta(held[0], rulesets[target]))
        held[0] = rulesets[target]

    samples["reapply_empty"] = measure(reapply_into("reapply_empty"), reps)
    held[0] = rulesets[applied[0]]
    samples["delta_empty"] = measure(reload_delta, reps)
    samples["nft_f_fresh_empty"] = measure(nft_fresh, reps, setup=drop_fresh)
    drop_fresh()

    # Load the elements: chunks of `chunk` addresses, one transaction each.
    wanted = addresses(opts.elements)
    chunk_ms: list[float] = []
    for start in range(0, len(wanted), opts.chunk):
        batch = [b.timed(ip, TIMEOUT_S) for ip in wanted[start : start + opts.chunk]]
        command = [b.add(b.element(SET_NAME, batch))]
        chunk_ms.append(clock_ms(partial(nft.run, command)))
    samples["load_total"] = [sum(chunk_ms)]
    samples["load_chunk"] = chunk_ms

    changes[0] = 0
    samples["reapply_loaded"] = measure(reapply_into("reapply_loaded"), reps)
    held[0] = rulesets[applied[0]]
    samples["delta_loaded"] = measure(reload_delta, reps)

    # The same transactions without the listing: in-process, and through the nft CLI.
    batches = _transactions(nft, rulesets, applied[0])
    changes[0] += 2
    samples["transaction_loaded"] = measure(lambda _: run_batch(batches), reps)
    with tempfile.TemporaryDirectory(prefix="afwb-") as tmp:
        files = [Path(tmp) / f"tx{i}.json" for i in (0, 1)]
        for file, batch in zip(files, batches, strict=True):
            file.write_text(json.dumps(b.batch(batch)))

        def nft_json(_: int) -> None:
            _nft_cli(["-j", "-f", str(files[flip()])])

        samples["nft_j_transaction_loaded"] = measure(nft_json, reps)
    samples["nft_f_fresh_loaded"] = measure(nft_fresh, reps, setup=drop_fresh)
    drop_fresh()

    # Verification, once and untimed as a benchmark: everything still there, timeouts kept.
    listed, list_ms = timed(lambda: nft.set_elements(SET_NAME))
    samples["list_elements"] = [list_ms]
    return {
        "samples": samples,
        "info": {
            **_verify(listed, wanted),
            "reapplies_with_elements": changes[0],
            "elements": opts.elements,
            "chunk": opts.chunk,
            "timeout_s": TIMEOUT_S,
            "set": SET_NAME,
        },
    }


def _nft_cli(args: list[str]) -> None:
    proc = subprocess.run(
        ["nft", *args], capture_output=True, text=True, check=False, timeout=NFT_TIMEOUT_S
    )
    if proc.returncode != 0:
        raise BenchError(f"nft {' '.join(args)} failed: {proc.stderr.strip()[:500]}")


def _transactions(nft: Nft, rulesets: list[Ruleset], holding: int) -> list[list[Json]]:
    """batches[k]: the batch `Nft.apply` sends to go from the other ruleset to rulesets[k]
    (object names do not depend on set elements, so the batches stay valid). Applies both
    in turn: the table ends up holding rulesets[holding] again."""
    batches: list[list[Json]] = [[], []]
    current = holding
    for _ in range(2):
        target = 1 - current
        batches[target] = transaction(rulesets[target], nft.observe())
        nft.apply(rulesets[target])
        current = target
    return batches


def _verify(listed: list[Any], wanted: list[str]) -> dict[str, Any]:
    """Count what the kernel lists and check every element's timeout and expiry."""
    values: set[str] = set()
    bad_timeout = 0
    expires: list[int] = []
    for item in listed:
        body = item.get("elem", {}) if isinstance(item, dict) else {}
        values.add(str(body.get("val", item)))
        if body.get("timeout") != TIMEOUT_S:
            bad_timeout += 1
        expires.append(int(body.get("expires", -1)))
    in_range = sum(1 for e in expires if 0 < e <= TIMEOUT_S)
    return {
        "listed": len(listed),
        "missing": len(set(wanted) - values),
        "unexpected": len(values - set(wanted)),
        "timeout_wrong": bad_timeout,
        "expires_in_range": in_range,
        "expires_min": min(expires, default=-1),
        "expires_max": max(expires, default=-1),
        "ok": len(listed) == len(wanted) == len(values)
        and not set(wanted) - values
        and bad_timeout == 0
        and in_range == len(wanted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="inner side of benchmarks.bench_elements")
    parser.add_argument("--inner", action="store_true", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--changed", required=True)
    parser.add_argument("--nft-fresh", required=True)
    parser.add_argument("--elements", type=int, required=True)
    parser.add_argument("--chunk", type=int, required=True)
    parser.add_argument("--reps", type=int, required=True)
    emit(_inner(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
