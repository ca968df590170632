"""Element writes at netlink speed (issue 15): our nfnetlink element writer against
libnftables and `nft -f`, side by side in one run, in a fresh `afwb-` namespace.

Owns: the outer side (a namespace, the inner side run in it, docs/benchmarks-writer.md) and
the inner side (`--inner`): our table from the default policy, then
- a single ban (one element with a timeout into `block_v4`) through the element writer
  (`NftKernel.run`) and through libnftables (`Nft.run`), with 0, 100,000 and (full run)
  1,000,000 elements in other sets of the namespace — a hash set and an interval set of
  /24 prefixes, in a table of their own;
- 100,000 new bans in one batch, and the same 100,000 re-blocked with a new timeout
  (the kernel updates timeouts in place: one add), against `nft -f` of the same elements
  into a fresh timeout hash set, same run;
- restoring 1,000,000 (full run; 200,000 with --quick) persisted bans in batches of 50,000
  as the cold start does, against one `nft -f` of the same elements.
Run: `sudo .venv/bin/python -m benchmarks.bench_writer [--quick]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import time
from typing import Any

from aitherfwd.adapters.kernel import NftKernel
from aitherfwd.adapters.nft import Nft
from aitherfwd.compiler import compile_policy
from aitherfwd.nft import builders as b
from aitherfwd.nft.builders import element_batches
from aitherfwd.policy.parse import parse_policy
from aitherfwd.reconcile import transaction
from benchmarks import doc
from benchmarks.netns import REPO, emit, namespace, require_own_namespace, run_inner
from benchmarks.stats import Summary, measure

OUT = REPO / "docs" / "benchmarks-writer.md"
COMMAND = "sudo .venv/bin/python -m benchmarks.bench_writer"
RESTORE_BATCH = 50_000  # as daemon/generations.py


def _v4(i: int, base: str = "11.0.0.0") -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + i))


def _nft_f(text: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["nft", "-f", "-"], input=text, text=True, capture_output=True, check=False, timeout=600
    )
    if done.returncode:
        raise RuntimeError(done.stderr[:400])
    return (time.perf_counter() - started) * 1000


def _others(n: int) -> None:
    """n elements in other sets: half in a hash set, half /24 prefixes in an interval set."""
    subprocess.run(["nft", "delete", "table", "inet", "others"], capture_output=True, check=False)
    _nft_f(
        "table inet others {\n set h { type ipv4_addr; flags timeout; }\n"
        " set i { type ipv4_addr; flags interval; }\n}\n"
    )
    half = n // 2
    for start in range(0, half, 100_000):
        stop = min(half, start + 100_000)
        hashed = ", ".join(_v4(i, "40.0.0.0") for i in range(start, stop))
        nets = ", ".join(f"{_v4(i * 256, '60.0.0.0')}/24" for i in range(start, stop))
        _nft_f(
            f"add element inet others h {{ {hashed} }}\nadd element inet others i {{ {nets} }}\n"
        )


def _single(kernel: NftKernel, reps: int, libreps: int) -> dict[str, list[float]]:
    """One ban through our writer, and through a fresh libnftables context per ban (what
    `nft add element` does; a long-lived context is as slow on some write sequences and
    fast on others: the daemon's own figure is in docs/benchmarks-daemon.md)."""

    def ours(i: int) -> None:
        elem = {"elem": {"val": _v4(i, "12.0.0.0"), "timeout": 600}}
        kernel.run([b.add(b.element("block_v4", [elem]))])

    def theirs(i: int) -> None:
        elem = {"elem": {"val": _v4(i, "13.0.0.0"), "timeout": 600}}
        Nft().run([b.add(b.element("block_v4", [elem]))])

    return {"netlink": measure(ours, reps), "libnftables": measure(theirs, libreps)}


def inner(args: argparse.Namespace) -> None:
    require_own_namespace(args.netns)
    policy = parse_policy((REPO / "policies" / "default.yaml").read_text(), "default.yaml").policy
    assert policy is not None
    kernel = NftKernel()
    kernel.run(transaction(compile_policy(policy), kernel.observe()))
    out: dict[str, Any] = {"single": {}}
    sizes = [0, 100_000] if args.quick else [0, 100_000, 1_000_000]
    for size in sizes:
        _others(size)
        libreps = 20 if size < 1_000_000 else 5
        out["single"][str(size)] = _single(kernel, 200, libreps)
    _others(0)

    n = 100_000
    elems = [{"elem": {"val": _v4(i, "14.0.0.0"), "timeout": 3600}} for i in range(n)]
    again = [{"elem": {"val": _v4(i, "14.0.0.0"), "timeout": 7200}} for i in range(n)]
    bulk, rebulk, nftf = [], [], []
    for rep in range(args.reps):
        kernel.run(
            [{"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "block_v4"}}}]
        )
        started = time.perf_counter()
        kernel.run([b.add(b.element("block_v4", elems))])
        bulk.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        kernel.run([b.add(b.element("block_v4", again))])
        rebulk.append((time.perf_counter() - started) * 1000)
        subprocess.run(
            ["nft", "delete", "table", "inet", "plain"], capture_output=True, check=False
        )
        _nft_f("table inet plain {\n set s { type ipv4_addr; flags timeout; }\n}\n")
        text = ", ".join(f"{_v4(i, '14.0.0.0')} timeout 3600s" for i in range(n))
        nftf.append(_nft_f(f"add element inet plain s {{ {text} }}\n"))
        del rep
    out["bulk"] = {"netlink": bulk, "netlink_reblock": rebulk, "nft_f": nftf}

    total = 200_000 if args.quick else 1_000_000
    restore = [{"elem": {"val": _v4(i, "16.0.0.0"), "timeout": 3600}} for i in range(total)]
    kernel.run([{"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": "block_v4"}}}])
    started = time.perf_counter()
    for batch in element_batches([b.add(b.element("block_v4", restore))], RESTORE_BATCH):
        kernel.run(batch)
    ours_ms = (time.perf_counter() - started) * 1000
    subprocess.run(["nft", "delete", "table", "inet", "plain"], capture_output=True, check=False)
    _nft_f("table inet plain {\n set s { type ipv4_addr; flags timeout; }\n}\n")
    text = ", ".join(f"{_v4(i, '16.0.0.0')} timeout 3600s" for i in range(total))
    out["restore"] = {
        "n": total,
        "netlink": ours_ms,
        "nft_f": _nft_f(f"add element inet plain s {{ {text} }}\n"),
    }
    emit(out)


def render(r: dict[str, Any]) -> str:
    rows: list[doc.Row] = []
    for size, runs in r["single"].items():
        ours, theirs = Summary.of(runs["netlink"]), Summary.of(runs["libnftables"])
        label = f"{int(size):,} elements in other sets of the table (hash + interval)"
        target = "≤ 1 ms at any size" if size != "0" else "≤ 0.5 ms (over the socket)"
        rows.append((f"single ban, element writer, {label}", ours, "ms", target))
        rows.append((f"single ban, libnftables, a context per ban, {label}", theirs, "ms", ""))
    bulk = r["bulk"]
    base = Summary.of(bulk["nft_f"])
    for key, name in (
        ("netlink", "100,000 new bans in one batch, element writer"),
        ("netlink_reblock", "re-blocking the same 100,000 (timeout updated in place)"),
    ):
        s = Summary.of(bulk[key])
        rows.append((f"{name} ({s.p50 / base.p50:.2f}x `nft -f`)", s, "ms", "≤ 1.0x `nft -f`"))
    rows.append(("baseline: `nft -f` of the same 100,000 into a timeout hash set", base, "ms", ""))
    rs = r["restore"]
    rows.append(
        (
            f"restore {rs['n']:,} bans in batches of {RESTORE_BATCH:,}, element writer "
            f"({rs['netlink'] / rs['nft_f']:.2f}x `nft -f`)",
            Summary.of([rs["netlink"]]),
            "ms",
            "≤ 3 s and ≤ 1.0x `nft -f`",
        )
    )
    rows.append(
        (f"baseline: one `nft -f` of the same {rs['n']:,}", Summary.of([rs["nft_f"]]), "ms", "")
    )
    return doc.table("Element writer benchmark", rows, COMMAND)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inner", action="store_true")
    parser.add_argument("--netns", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return 0
    with namespace() as ns:
        extra = ["--quick"] if args.quick else []
        result = run_inner(
            ns, "benchmarks.bench_writer", [*extra, "--reps", str(args.reps)], timeout=1800
        )
    text = render(result)
    if not args.quick:
        OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
