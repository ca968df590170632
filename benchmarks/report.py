"""The benchmark report: one Markdown table, the machine, and what the numbers mean.

Owns: turning the cases' raw samples into rows (p50, p90, ratios to the baselines measured
in the same run, targets met or missed), the interpretation against ANCHORS.md figures,
and the text of docs/benchmarks.md. Pure: no kernel, no subprocesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.stats import Summary, add_samples, ratio

SEED12 = "seed12"
GEN1000 = "gen1000"
ELEMENTS = "elements"

Result = dict[str, Any]  # {"samples": {key: [ms, ...]}, "info": {...}}
X = "\u00d7"  # multiplication sign, for ratios
RANGE = "\u2013"  # en dash, for ranges


@dataclass(frozen=True, slots=True)
class Row:
    case: str
    label: str
    summary: Summary
    vs_nft: float | None = None
    vs_lib: float | None = None
    target_ms: float | None = None


@dataclass(frozen=True, slots=True)
class RunConfig:
    quick: bool
    reps_seed12: int
    reps_gen1000: int
    reps_elements: int
    elements: int
    chunk: int
    gen_rules: int


# key, label; "a+b" keys are per-iteration sums of the same runs
POLICY_ROWS: tuple[tuple[str, str], ...] = (
    ("parse", "parse: read + YAML + validate (`load_policy`)"),
    ("compile", "compile (`compile_policy`), as in a reload: unchanged rules memoised"),
    ("compile_cold", "compile, first in the process (nothing memoised)"),
    ("reapply", "re-apply `Nft.apply`: changed ruleset into the populated table"),
    ("reapply_observe", "of which observe: terse listing of our table"),
    ("reapply_tx", "of which the transaction (flush and refill everything)"),
    ("compile+reapply", "**compile + re-apply** (a reload through `Nft.apply`)"),
    ("parse+compile+reapply", "parse + compile + re-apply"),
    ("delta_run", "daemon reload: `Nft.run(delta(previous, desired))`, no listing"),
    ("delta_compile+delta_run", "**compile + daemon reload**"),
    ("first_apply", "first apply `Nft.apply` into an empty namespace"),
    ("first_compile+first_apply", "compile + first apply"),
    ("context", "`Nft()`: a new libnftables context (once per process)"),
    ("nft_f", "baseline: `nft -f FILE` into an empty namespace (includes nft start-up)"),
    ("nft_f_empty", "baseline: `nft -f` of an empty file (nft start-up alone)"),
    ("nft_f_replace", "baseline: `nft -f` delete + reload of the table (drops set elements)"),
    ("json_cmd", "baseline: libnftables `json_cmd(compiled JSON)` into an empty namespace"),
    ("cmd_text", "baseline: libnftables `cmd(nft text)` into an empty namespace"),
)

ELEMENT_ROWS: tuple[tuple[str, str], ...] = (
    ("load_total", "load {n} elements, 1 h timeouts, into `block_v4` ({chunks} `Nft.run` calls)"),
    ("load_chunk", "one chunk of {chunk} elements"),
    ("reapply_empty", "re-apply `Nft.apply`, changed ruleset, set empty (reference)"),
    ("reapply_empty_observe", "of which observe (terse listing), set empty"),
    ("reapply_loaded", "**re-apply `Nft.apply`, changed ruleset, {n} elements live**"),
    ("reapply_loaded_observe", "of which observe (terse listing), {n} live"),
    ("reapply_loaded_tx", "of which the transaction, right after that listing"),
    ("transaction_loaded", "the same transaction with no listing before it, {n} live"),
    ("delta_empty", "daemon reload `Nft.run(delta(previous, desired))`, set empty"),
    ("delta_loaded", "**daemon reload `Nft.run(delta(previous, desired))`, {n} live**"),
    ("nft_j_transaction_loaded", "baseline: `nft -j -f` of the same batch, {n} live (kept)"),
    ("nft_f_fresh_empty", "baseline: `nft -f` static ruleset as a fresh table, set empty"),
    ("nft_f_fresh_loaded", "baseline: `nft -f` static ruleset as a fresh table, {n} live"),
    ("list_elements", 'verification: `Nft.set_elements("block_v4")`, once, outside timings'),
)


def _samples(result: Result, key: str) -> list[float]:
    parts = key.split("+")
    series: list[list[float]] = [result["samples"][p] for p in parts]
    return series[0] if len(series) == 1 else add_samples(*series)


def summaries(result: Result, keys: list[str]) -> dict[str, Summary]:
    return {k: Summary.of(_samples(result, k)) for k in keys}


def policy_rows(case: str, result: Result, target_ms: float) -> list[Row]:
    s = summaries(result, [k for k, _ in POLICY_ROWS])
    rows = []
    for key, label in POLICY_ROWS:
        rows.append(
            Row(
                case,
                label,
                s[key],
                ratio(s[key], s["nft_f"]),
                ratio(s[key], s["json_cmd"]),
                target_ms if key in ("compile+reapply", "delta_compile+delta_run") else None,
            )
        )
    return rows


def element_rows(case: str, result: Result, cfg: RunConfig, target_ms: float) -> list[Row]:
    s = summaries(result, [k for k, _ in ELEMENT_ROWS])
    chunks = -(-cfg.elements // cfg.chunk)
    rows = []
    for key, label in ELEMENT_ROWS:
        text = label.format(n=f"{cfg.elements:,}", chunk=f"{cfg.chunk:,}", chunks=chunks)
        rows.append(
            Row(
                case,
                text,
                s[key],
                ratio(s[key], s["nft_f_fresh_loaded"]),
                None,
                target_ms if key in ("reapply_loaded", "delta_loaded") else None,
            )
        )
    return rows


def _ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}{X}"


def _target(row: Row) -> str:
    if row.target_ms is None:
        return ""
    verdict = "met" if row.summary.p50 <= row.target_ms else "**missed**"
    return f"≤ {_ms(row.target_ms)} ms: {verdict}"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | measurement | n | p50 ms | p90 ms | ÷ `nft -f` | ÷ libnftables | target |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.label} | {r.summary.n} | {_ms(r.summary.p50)} | "
            f"{_ms(r.summary.p90)} | {_x(r.vs_nft)} | {_x(r.vs_lib)} | {_target(r)} |"
        )
    return "\n".join(lines) + "\n"


def verification(result: Result) -> str:
    i = result["info"]
    verdict = "**all present, timeouts intact**" if i["ok"] else "**FAILED**"
    return (
        f"Verification after {i['reapplies_with_elements']} re-applies with the elements "
        f"live: {i['listed']:,} of {i['elements']:,} listed in `{i['set']}` "
        f"({i['missing']} missing, {i['unexpected']} unexpected), {i['timeout_wrong']} "
        f"with a timeout other than {i['timeout_s']} s, expiries between "
        f"{i['expires_min']} s and {i['expires_max']} s ({i['expires_in_range']:,} in "
        f"(0, {i['timeout_s']}]): {verdict}."
    )


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "—"


def _met(value: float, target: float) -> str:
    return "met" if value <= target else f"missed ({value / target:.1f}{X} the target)"


def interpret_policy(title: str, result: Result, target_ms: float) -> str:
    s = summaries(result, [k for k, _ in POLICY_ROWS])
    i = result["info"]
    reload_ms = s["compile+reapply"].p50
    daemon_ms = s["delta_compile+delta_run"].p50
    reapply = s["reapply"].p50
    observe = s["reapply_observe"].p50
    json_ms = s["json_cmd"].p50
    consistent = (
        "and `plan` found the table identical to the last ruleset afterwards"
        if i.get("delta_consistent")
        else "but **`plan` found the table differing from the last ruleset afterwards**"
    )
    return (
        f"**{title}** {i['policy_rules']:,} policy rules become {i['kernel_rules']:,} kernel "
        f"rules in {i.get('rule_chains', 0):,} rule chains, with {i['anonymous_sets']:,} "
        f"anonymous sets and {i['sets']} named sets and maps, {i.get('shared_sets', 0):,} of "
        f"them value lists shared by content. A reload through `Nft.apply` (compile + "
        f"re-apply, what `aitherfwd apply` does) "
        f"takes {_ms(reload_ms)} ms p50 against the {_ms(target_ms)} ms target: "
        f"{_met(reload_ms, target_ms)}. Compiling takes {_ms(s['compile'].p50)} ms "
        f"({_ms(s['compile_cold'].p50)} ms the first time in a process; parsing the "
        f"file another {_ms(s['parse'].p50)} ms); the re-apply is {_ms(reapply)} ms, of which "
        f"the `observe` listing is {_ms(observe)} ms ({_pct(observe, reapply)}) and the "
        f"transaction, which flushes and refills every chain, {_ms(s['reapply_tx'].p50)} ms. "
        f"The daemon's reload sends only what changed (`reconcile.delta`, no listing): "
        f"compile + reload {_ms(daemon_ms)} ms, {_met(daemon_ms, target_ms)}, {consistent}. "
        f"The first apply into an empty namespace takes {_ms(s['first_apply'].p50)} ms, "
        f"{s['first_apply'].p50 / json_ms:.2f}{X} raw libnftables `json_cmd` of the same JSON "
        f"({_ms(json_ms)} ms; `cmd` of the text: {_ms(s['cmd_text'].p50)} ms) and "
        f"{s['first_apply'].p50 / s['nft_f'].p50:.2f}{X} `nft -f` ({_ms(s['nft_f'].p50)} ms, "
        f"{_ms(s['nft_f_empty'].p50)} ms of it starting the nft process). Reloading with "
        f"`nft -f` (delete + load in one transaction, which would drop every ban) takes "
        f"{_ms(s['nft_f_replace'].p50)} ms; the element-keeping `Nft.apply` re-apply costs "
        f"{reapply / s['nft_f_replace'].p50:.2f}{X} that, the daemon's reload "
        f"{s['delta_run'].p50 / s['nft_f_replace'].p50:.2f}{X}."
    )


def _per_rule_us(result: Result) -> float:
    """Microseconds per kernel rule of the fastest raw libnftables fresh load."""
    s = summaries(result, ["json_cmd", "cmd_text"])
    fresh = min(s["json_cmd"].p50, s["cmd_text"].p50)
    return 1000 * fresh / max(int(result["info"]["kernel_rules"]), 1)


def interpret_cost(results: dict[str, Result], cfg: RunConfig) -> str:
    """Where the time goes, across cases; the profile is from development (perf)."""
    text = "**Where the time goes.** "
    if SEED12 in results and GEN1000 in results:
        small, large = _per_rule_us(results[SEED12]), _per_rule_us(results[GEN1000])
        text += (
            f"A fresh load through raw libnftables costs {small:.0f} µs per kernel rule at 12 "
            f"policy rules and {large:.0f} µs at {cfg.gen_rules:,}: the cost grows faster than "
            "the ruleset, so no Python-side saving brings a full 1,000-rule load near 100 ms. "
        )
    text += (
        "Before issue 15 a zone chain held a copy of every rule that concerned it, each "
        "value list an anonymous set (1,000 rules: 3,393 kernel rules, 3,537 anonymous "
        "sets), so the daemon's reload that adds one rule to `external` flushed and refilled "
        "that chain, about 900 kernel rules and their sets. Measured in a private namespace "
        "during development (`unshare -n`, one-rule append, medians of 8, 2 loaded cores): "
        "compile 89 ms, `delta` 8 ms, JSON serialisation 7 ms and the transaction 622 ms, "
        "of which 40 ms user CPU (libnftables parsing and evaluating the batch) and 590 ms "
        "system CPU — the kernel, which handles the batch inside our `sendmsg` and walks "
        "every set of the table and of the transaction for each new anonymous set "
        "(`nf_tables_newset`, `nft_set_lookup_global`, `__nft_set_trans_bind`). With 100,000 "
        "prefixes in `block_v4_net` the same reload took 655 ms: libnftables 1.0.6 does not "
        "fetch interval-set elements for rule commands, so the cache problem of element "
        "writes does not touch a reload. Now each rule is one chain `r_<rule>` that the zone "
        "chains jump to, and value lists are named sets shared by content (docs/kernel.md): "
        "the same reload refills the `external` jump list (plain jumps, no sets) and adds the "
        "new rule's chain; a change of one rule's ports refills that rule's chain alone. "
        "Compiling memoises each rule's kernel rules on the rule's value, so an unchanged "
        "rule costs a lookup; the first compile in a process still builds everything."
    )
    return text


def interpret_elements(result: Result, cfg: RunConfig, target_ms: float) -> str:
    s = summaries(result, [k for k, _ in ELEMENT_ROWS])
    i = result["info"]
    n = cfg.elements
    load_s = s["load_total"].p50 / 1000
    rate = n / load_s if load_s > 0 else 0.0
    loaded = s["reapply_loaded"].p50
    empty = s["reapply_empty"].p50
    daemon = s["delta_loaded"].p50
    return (
        f"**{n:,} live elements.** Loading them with 1 h timeouts in chunks of "
        f"{cfg.chunk:,} took {load_s:.2f} s ({rate:,.0f} elements/s; ANCHORS: 0.52 s for "
        f"100,000 in one `nft -f` batch into a hash set). A re-apply through `Nft.apply` with "
        f"them present takes {_ms(loaded)} ms p50 against the {_ms(target_ms)} ms target: "
        f"{_met(loaded, target_ms)}; that is {loaded / empty:.0f}{X} the {_ms(empty)} ms "
        f"without them. The cause is the `observe` step: libnftables fetches every set element "
        f"even for a terse listing ({_ms(s['reapply_loaded_observe'].p50)} ms with the "
        f"elements, {_ms(s['reapply_empty_observe'].p50)} ms without), and the next command "
        f"first drops that element cache: the transaction costs "
        f"{_ms(s['reapply_loaded_tx'].p50)} ms right after the listing and "
        f"{_ms(s['transaction_loaded'].p50)} ms without one (the same batch through "
        f"`nft -j -f`: {_ms(s['nft_j_transaction_loaded'].p50)} ms). The daemon's delta "
        f"reload lists nothing: {_ms(daemon)} ms with the elements live "
        f"({_ms(s['delta_empty'].p50)} ms without), {_met(daemon, target_ms)}. None were lost: "
        f"{i['listed']:,}/{n:,} listed after {i['reapplies_with_elements']} re-applies, every "
        f"timeout still {i['timeout_s']} s with {i['expires_min']}{RANGE}{i['expires_max']} s "
        f"left. `nft -f` of the static ruleset as a fresh table takes "
        f"{_ms(s['nft_f_fresh_loaded'].p50)} ms with the elements present and "
        f"{_ms(s['nft_f_fresh_empty'].p50)} ms without — a full-table `nft -f` is cheap but "
        f"starts with empty sets, so it cannot keep a single ban. Listing the {n:,} elements "
        f"once for the check took {s['list_elements'].p50 / 1000:.2f} s."
    )


def interpret_peers(elements: Result | None, cfg: RunConfig) -> str:
    text = (
        "**Peers (ANCHORS.md).** The seed reports rule reload < 5 ms for 12 rules, but that "
        "swaps a Python rule list in memory; here a reload reaches the kernel. fail2ban 1.0.2 "
        "with its nftables action needs ≈ 10.5 ms per ban (10,000 bans in 105 s) and 30 to 40 "
        "min to restore 20,000 bans at start; CrowdSec's bouncer managed ≈ 40 decisions/s; "
        "firewalld reloads a 12,000-entry ipset in 2.6 s (82.6 s before its 2026 fix)."
    )
    if elements is not None:
        load = Summary.of(elements["samples"]["load_total"]).p50 / 1000
        loaded = Summary.of(elements["samples"]["reapply_loaded"]).p50
        daemon = Summary.of(elements["samples"]["delta_loaded"]).p50
        text += (
            f" aitherfwd loads {cfg.elements:,} bans in {load:.2f} s and keeps all of them "
            f"through a policy reload: {_ms(daemon)} ms in the daemon, {_ms(loaded)} ms "
            "through `aitherfwd apply`."
        )
    return text


METHOD = """\
- Every kernel measurement runs inside its own network namespace `afwb-<pid>-<n>`, created
  with `ip netns add` and deleted afterwards; the benchmark code is re-executed there with
  `ip netns exec NS .venv/bin/python -m benchmarks.<module> --inner …` and refuses to run
  outside that namespace. The root namespace's firewall is never touched; no packets are
  sent.
- Timing is in-process (`time.perf_counter_ns`, one long-lived `Nft()` as in the daemon;
  interpreter start-up is never timed), garbage collected before each sample. Each loop
  starts with an untimed warm-up run, except the 1,000-rule loops (runs of a second or
  more; the policy is applied once before any timing). Reported: median (p50) and 90th
  percentile. Ratios are p50 ÷ p50 of a baseline from the same run and namespace.
- Re-applies alternate between the policy and the same policy plus one rule, so every
  timed re-apply really changes the ruleset. "First apply" deletes our table (untimed)
  before each sample, leaving the namespace without any table.
- `Nft.apply` is split into its `observe` listing and its transaction by
  `benchmarks/timednft.py`, a subclass of `Nft` that times those two methods inside the
  same call. The daemon's reload is reproduced as the daemon does it,
  `Nft.run(reconcile.delta(previous, desired))` with no listing; after its loop, `plan`
  compares the kernel's table with the last ruleset.
- Baseline text comes from `aitherfwd compile --format nft` (rendered by the kernel).
  nftables 1.0.6 cannot read that text back as is, so two edits are made before `nft -f`
  (listed under the table). The `nft -f` rows include starting the nft process (the
  "empty file" row shows that share). After loading, the kernel's listing of the
  baseline's table is compared with the text: differences are equivalent rewrites (for
  example `reject` listed as `reject with icmp port-unreachable` once a rule is tied to
  one address family, one-element sets listed without braces).
- Case 3 cannot have a like-for-like `nft -f` baseline: a table definition loaded with
  `nft -f` starts with empty sets. As asked, the static ruleset is loaded as a fresh
  table (named `afwb_fresh`, next to ours, deleted after each sample) without and with
  the elements present; `nft -j -f` of aitherfwd's own batch is the CLI doing the same
  element-keeping transaction.
"""


def notes(results: dict[str, Result]) -> list[str]:
    """What had to be done to the baseline's input, and how faithfully it loaded."""
    out: list[str] = []
    edits = sorted({e for r in results.values() for e in r["info"].get("nft_text_edits", [])})
    if edits:
        out.append(
            "`aitherfwd compile --format nft` prints text that nftables 1.0.6 refuses to load; "
            "the baselines load it after these edits: " + "; ".join(edits) + ". (The same "
            "holds for any `nft list ruleset` dump taken while our table is loaded: it "
            "cannot be restored with `nft -f`.)"
        )
    diffs = [
        f"{name} {r['info']['nft_f_relist_diff_lines']}"
        for name, r in results.items()
        if "nft_f_relist_diff_lines" in r["info"]
    ]
    if diffs:
        out.append(
            "Lines where the kernel's listing of the table loaded by `nft -f` differs from "
            "the text it loaded (equivalent rewrites, see Method): " + ", ".join(diffs) + "."
        )
    return out


def document(
    *,
    command: str,
    machine: dict[str, str],
    cfg: RunConfig,
    results: dict[str, Result],
    rows: list[Row],
    started: str,
    checks: list[str],
) -> str:
    parts = [
        "# Benchmarks",
        "",
        "`sudo make bench` runs `python -m benchmarks.run` (add `--quick` for a short run, "
        "which prints the table without rewriting this file). It measures how long aitherfwd "
        "takes to parse, compile and apply policies into the kernel and to re-apply while "
        "bans are live, next to `nft -f` and raw libnftables measured in the same run. This "
        "file is written by the benchmark; the numbers below are from its last full run.",
        "",
        "Detection (conntrack accounting at 100,000 entries, event rate, RSS and CPU under a "
        "SYN flood, port scan to kernel block): [benchmarks-detect.md](benchmarks-detect.md), "
        "written by `python -m benchmarks.bench_detect`.",
        "",
        "Egress (sandbox grant latency, DNS refresh of 1,000 names): "
        "[benchmarks-egress.md](benchmarks-egress.md), written by "
        "`python -m benchmarks.bench_egress`.",
        "",
        "Other benchmarks, each with its own command: [the daemon's control socket]"
        "(benchmarks-daemon.md), [restoring persisted blocks and threat ingestion]"
        "(benchmarks-persistence.md), [Prometheus scrapes at 1,000,000 blocks]"
        "(benchmarks-metrics.md).",
        "",
        "## Last run",
        "",
        f"- Command: `{command}` (as root), started {started} UTC",
        f"- Machine: {machine['nproc']} cores (`nproc`), kernel `{machine['kernel']}`, "
        f"`{machine['nft']}`, Python {machine['python']}, {machine['cpu']}; load average at "
        f"start {machine['load']}",
        f"- Repetitions: {cfg.reps_seed12} (12 rules), {cfg.reps_gen1000} "
        f"({cfg.gen_rules:,} rules), {cfg.reps_elements} ({cfg.elements:,} elements)",
        "",
        table(rows),
        "`÷ nft -f`: p50 over the p50 of the case's `nft -f` baseline (12 and 1,000 rules: "
        "the same ruleset loaded into an empty namespace; elements: the static ruleset loaded "
        "as a fresh table with the elements live). `÷ libnftables`: over libnftables "
        "`json_cmd` of the compiled JSON into an empty namespace.",
        "",
    ]
    if ELEMENTS in results:
        parts += [verification(results[ELEMENTS]), ""]
    parts += [f"- {note}" for note in notes(results)] + [""]
    parts += ["Checks: " + "; ".join(checks) + ".", "", "## What the numbers say", ""]
    if SEED12 in results:
        parts += [
            interpret_policy(
                "12 rules, the seed's policy (`benchmarks/policies/seed12.yaml`).",
                results[SEED12],
                2.0,
            ),
            "",
        ]
    if GEN1000 in results:
        parts += [
            interpret_policy(
                f"{cfg.gen_rules:,} generated rules, 5 zones, IPv4 and "
                "IPv6 sources (`benchmarks/policygen.py`).",
                results[GEN1000],
                100.0,
            ),
            "",
        ]
    if SEED12 in results or GEN1000 in results:
        parts += [interpret_cost(results, cfg), ""]
    if ELEMENTS in results:
        parts += [interpret_elements(results[ELEMENTS], cfg, 1000.0), ""]
    parts += [interpret_peers(results.get(ELEMENTS), cfg), "", "## Method", "", METHOD]
    return "\n".join(parts)
