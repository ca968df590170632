"""The tool-call gateway against the reference (seed 003's Go agent-tool-firewall), side by
side in the same run: evaluate latency over one kept-alive connection (p50, p99), decisions
per second with 8 concurrent kept-alive clients, for a 50-tool policy; and the in-process
evaluate (`aitherfwd.gateway.evaluate`) without HTTP.

Owns: the policy (45 allowed tools with argument rules, 5 denied; a rate limit high enough
never to bite), the load (the same Python clients for both servers, one process each), the
rounds (alternating servers, medians of 3) and the runs written to
docs/benchmarks-gateway.md. Nothing here
touches a firewall: both servers listen on loopback ports.

The reference is not part of this repository. Give its source directory (main.go) with
`--reference DIR`: it is built offline with Debian's Go (golang-go) and yaml.v3
(golang-gopkg-yaml.v3-dev) in GOPATH mode. Without it only the gateway is measured.
Run: `.venv/bin/python -m benchmarks.bench_gateway [--reference DIR] [--quick] [--runs N]
[--max-load L --wait S]` (N whole runs, each after waiting, bounded, for the 1-minute load
average to drop below L; the report is `benchmarks.gateway_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aitherfwd.gateway.evaluate import Call, evaluate
from aitherfwd.gateway.parse import parse_tool_policy
from aitherfwd.gateway.ratelimit import RateLimits
from aitherfwd.gateway.serve import event_loop
from benchmarks import gateway_report
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
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="h11", loop=sys.argv[2],
            access_log=False, log_level="warning", proxy_headers=False)
"""


class Floor:
    """uvicorn (h11 and the event loop the gateway runs on, `serve.event_loop`) answering
    a constant: what the server stack costs before any decision or audit line."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Floor:
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(self.port), event_loop()])
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


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` on `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def placed(pid: int | None) -> Iterator[None]:
    """The latency client on CPU 0 and the server's threads on CPU 1, the same for every
    server: where the scheduler puts the two otherwise moves a p50 by up to 2x between
    runs (docs/benchmarks-gateway.md). Throughput is measured unpinned."""
    everything = set(range(os.cpu_count() or 1))
    if pid is None or len(everything) < 2:
        yield
        return
    _pin(pid, {1})
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)
        _pin(pid, everything)


def measure(port: int, pid: int | None, count: int, seconds: float) -> dict[str, float]:
    with placed(pid):
        lat = latency(port, count)
    return {"p50": _ms(lat, 0.5), "p99": _ms(lat, 0.99), "rps": throughput(port, seconds)}


Servers = dict[str, tuple[int, int | None]]  # name -> (port, pid when the latency is pinned)


def rounds(servers: Servers, count: int, seconds: float, n: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(n):
        for name, (port, pid) in servers.items():  # alternating, so drift hits both alike
            runs[name].append(measure(port, pid, count, seconds))
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "rps")}
        for name, rs in runs.items()
    }


def wait_for_load(below: float, seconds: float) -> float:
    """Poll the 1-minute load average until it is below `below` or `seconds` passed
    (bounded); the load it ends at."""
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def _pid(proc: subprocess.Popen[bytes] | None, pin: bool) -> int | None:
    return proc.pid if proc is not None and pin else None


def one_run(
    reference: Path | None,
    count: int,
    seconds: float,
    rounds_n: int,
    *,
    below: float,
    wait: float,
    pin: bool,
) -> gateway_report.Run:
    with tempfile.TemporaryDirectory(prefix="afw-bench-gw-") as d:
        tmp = Path(d)
        with contextlib.ExitStack() as stack:
            ours = stack.enter_context(GatewayProc(tmp, policy_text()))
            servers: Servers = {gateway_report.GATEWAY: (ours.port, _pid(ours.proc, pin))}
            floor = stack.enter_context(Floor())
            servers[gateway_report.FLOOR] = (floor.port, _pid(floor.proc, pin))
            if reference is not None:
                ref = stack.enter_context(Reference(reference, tmp))
                servers[gateway_report.REFERENCE] = (ref.port, _pid(ref.proc, pin))
            before = wait_for_load(below, wait)
            results = rounds(servers, count, seconds, rounds_n)
            return gateway_report.Run(before, os.getloadavg()[0], results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="the reference's source dir (main.go)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="whole runs, one after the other")
    parser.add_argument(
        "--max-load",
        type=float,
        default=float("inf"),
        help="before each run, wait (at most --wait s) for the 1-minute load below this",
    )
    parser.add_argument("--wait", type=float, default=300.0)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="latency: the client on CPU 0, the server measured on CPU 1 (see `placed`)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    count, seconds, n = (500, 1.0, 1) if args.quick else (3000, 3.0, 3)
    reference = args.reference.resolve() if args.reference is not None else None
    runs = []
    for i in range(max(1, args.runs)):
        runs.append(
            one_run(reference, count, seconds, n, below=args.max_load, wait=args.wait, pin=args.pin)
        )
        print(f"run {i + 1}: load {runs[-1].load_before:.1f} -> {runs[-1].load_after:.1f}: ")
        print(json.dumps(runs[-1].results, indent=1))
    inproc = in_process(20_000)
    path = os.environ.get("PYTHONPATH")  # e.g. Debian's packages unpacked (the .deb's stack)
    command = (f"PYTHONPATH={path} " if path else "") + ".venv/bin/python -m "
    command += "benchmarks.bench_gateway " + " ".join(sys.argv[1:])
    text = gateway_report.report(
        runs, (_ms(inproc, 0.5), _ms(inproc, 0.99)), command, event_loop(), pinned=args.pin
    )
    print(text)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(gateway_report.with_notes(text, previous))


if __name__ == "__main__":
    main()
