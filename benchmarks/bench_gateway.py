"""The tool-call gateway against the reference (seed 003's Go agent-tool-firewall), side by
side in the same run: evaluate latency over one kept-alive connection (p50, p99), decisions
per second with 8 concurrent kept-alive clients, for a 50-tool policy; and the in-process
evaluate (`aitherfwd.gateway.evaluate`) without HTTP.

Owns: the policy (45 allowed tools with argument rules, 5 denied; a rate limit high enough
never to bite), the load (the same Python clients for both servers, one process each), the
rounds (alternating servers, medians of 3) and docs/benchmarks-gateway.md. Nothing here
touches a firewall: both servers listen on loopback ports.

The reference is not part of this repository. Give its source directory (main.go) with
`--reference DIR`: it is built offline with Debian's Go (golang-go) and yaml.v3
(golang-gopkg-yaml.v3-dev) in GOPATH mode. Without it only the gateway is measured.
Run: `.venv/bin/python -m benchmarks.bench_gateway [--reference DIR] [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aitherfwd.gateway.evaluate import Call, evaluate
from aitherfwd.gateway.parse import parse_tool_policy
from aitherfwd.gateway.ratelimit import RateLimits
from lab.gateway import GatewayProc, free_port
from lab.wait import until

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks-gateway.md"
CLIENTS = 8
BODY = json.dumps({"tool": "tool.25", "params": {"q": "weather in paris tomorrow"}}).encode()


def policy_text() -> str:
    allow = "".join(
        f'    - name: "tool.{i}"\n      args_blocklist: ["password", "secret", "api_key"]\n'
        "      max_arg_length: 4096\n"
        for i in range(45)
    )
    deny = "".join(f'    - name: "denied.{i}"\n' for i in range(5))
    return (
        'version: 1\ntools:\n  default: "deny"\n  rate_limit:\n'
        f"    requests_per_minute: 1000000\n  allow:\n{allow}  deny:\n{deny}"
    )


def _post(conn: http.client.HTTPConnection) -> None:
    conn.request("POST", "/v1/evaluate", BODY, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    data = answer.read()
    if answer.status != 200 or b'"allowed":true' not in data:
        raise RuntimeError(f"unexpected answer {answer.status}: {data[:200]!r}")


def latency(port: int, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(200):
        _post(conn)
    out = []
    for _ in range(count):
        t = time.perf_counter()
        _post(conn)
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def _client(port: int, seconds: float, start: float, result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _post(conn)
    while time.time() < start:
        time.sleep(0.001)
    done, end = 0, start + seconds
    while time.time() < end:
        _post(conn)
        done += 1
    result.put(done)


def throughput(port: int, seconds: float) -> float:
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    start = time.time() + 0.5
    procs = [
        multiprocessing.Process(target=_client, args=(port, seconds, start, queue))
        for _ in range(CLIENTS)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds + 30) for _ in procs)
    for p in procs:
        p.join(30)
    return total / seconds


def in_process(count: int) -> list[float]:
    result = parse_tool_policy(policy_text(), "bench.yaml")
    assert result.policy is not None
    limits, call, out = RateLimits(), Call("tool.25", {"q": "weather in paris tomorrow"}), []
    for i in range(count):
        t = time.perf_counter()
        evaluate(result.policy, call, now=i * 1e-4, limits=limits, resolve=os.path.realpath)
        out.append(time.perf_counter() - t)
    return out


FLOOR = r"""
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"allowed":true}'})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="h11", loop="asyncio",
            access_log=False, log_level="warning")
"""


class Floor:
    """uvicorn (h11, asyncio, as the gateway runs it) answering a constant: what the
    server stack costs before any Starlette, decision or audit line."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Floor:
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(self.port)])
        until(lambda: _answers(self.port), 20, "the uvicorn floor to answer")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        _post(conn)
        return True
    except (OSError, RuntimeError):
        return False


class Reference:
    def __init__(self, source: Path, tmp: Path) -> None:
        self.binary = tmp / "agent-tool-firewall"
        env = {**os.environ, "GOPATH": "/usr/share/gocode", "GO111MODULE": "off"}
        env["GOCACHE"] = str(tmp / "gocache")
        subprocess.run(
            ["go", "build", "-o", str(self.binary), "main.go"],
            cwd=source,
            env=env,
            check=True,
            timeout=600,
        )
        self.tmp, self.port = tmp, free_port()
        (tmp / "ref-policy.yaml").write_text(policy_text())
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Reference:
        env = {
            **os.environ,
            "BIND_ADDR": f"127.0.0.1:{self.port}",
            "POLICY_PATH": str(self.tmp / "ref-policy.yaml"),
            "AUDIT_LOG_PATH": str(self.tmp / "ref-audit.jsonl"),
            "SERVICE_TOKEN_PATH": str(self.tmp / "none"),
        }
        self.proc = subprocess.Popen(
            [str(self.binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def up() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            except OSError:
                return False

        until(up, 20, "the reference to answer /health")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def measure(port: int, count: int, seconds: float) -> dict[str, float]:
    lat = latency(port, count)
    return {"p50": _ms(lat, 0.5), "p99": _ms(lat, 0.99), "rps": throughput(port, seconds)}


def rounds(
    servers: dict[str, int], count: int, seconds: float, n: int
) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(n):
        for name, port in servers.items():  # alternating, so drift hits both alike
            runs[name].append(measure(port, count, seconds))
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "rps")}
        for name, rs in runs.items()
    }


def report(results: dict[str, dict[str, float]], inproc: list[float], quick: bool) -> str:
    lines = [
        "# Benchmarks: the tool-call gateway",
        "",
        "`.venv/bin/python -m benchmarks.bench_gateway --reference DIR` "
        f"({'--quick, ' if quick else ''}{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} at the end). "
        "A 50-tool policy (45 allowed with argument rules, "
        "5 denied); every call `tool.25` with one string parameter, allowed; both servers "
        "write their audit line per decision. Clients: Python `http.client`, one kept-alive "
        f"connection each; latency with one client, throughput with {CLIENTS} client processes "
        "on the same 2 cores as the server. Medians of 3 alternating rounds. **Measured on a "
        "shared machine with other engineers' test runs: absolute figures are noisy; the "
        "ratio to the reference, measured in the same run, is what counts.**",
        "",
        "| server | p50 latency | p99 latency | decisions/s (8 clients) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['p50']:.0f} µs | {r['p99']:.0f} µs | {r['rps']:,.0f} |")
    if "reference (Go)" in results and "aitherfwd gateway" in results:
        ours, ref = results["aitherfwd gateway"], results["reference (Go)"]
        lines += [
            "",
            f"Ratios (gateway / reference): p50 {ours['p50'] / ref['p50']:.2f}x "
            f"(target ≤ 3x), p99 {ours['p99'] / ref['p99']:.2f}x, throughput "
            f"{ours['rps'] / ref['rps']:.2f}x (target ≥ 0.33x).",
        ]
    if "uvicorn floor (constant answer)" in results and "reference (Go)" in results:
        floor, ref = results["uvicorn floor (constant answer)"], results["reference (Go)"]
        lines += [
            "",
            f"The floor — uvicorn with h11 answering a constant, no Starlette, no decision, "
            f"no audit — is already {floor['p50'] / ref['p50']:.2f}x the reference's p50 and "
            f"{floor['rps'] / ref['rps']:.2f}x its throughput: the HTTP stack, not the "
            "evaluation, is what separates the two.",
        ]
    lines += [
        "",
        f"In-process evaluate (no HTTP): p50 {_ms(inproc, 0.5):.1f} µs, "
        f"p99 {_ms(inproc, 0.99):.1f} µs (target p50 ≤ 10 µs).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="the reference's source dir (main.go)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    count, seconds, n = (500, 1.0, 1) if args.quick else (3000, 3.0, 3)
    with tempfile.TemporaryDirectory(prefix="afw-bench-gw-") as d:
        tmp = Path(d)
        with contextlib.ExitStack() as stack:
            ours = stack.enter_context(GatewayProc(tmp, policy_text()))
            servers = {"aitherfwd gateway": ours.port}
            floor = stack.enter_context(Floor())
            servers["uvicorn floor (constant answer)"] = floor.port
            if args.reference is not None:
                ref = stack.enter_context(Reference(args.reference.resolve(), tmp))
                servers["reference (Go)"] = ref.port
            results = rounds(servers, count, seconds, n)
    text = report(results, in_process(20_000), args.quick)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
