"""An HTTP site for the ASGI middleware's kernel tests and benchmark: a Starlette app under
uvicorn with `aitherfwd.asgi.FirewallMiddleware`, a tiny reverse proxy that appends the
client to X-Forwarded-For (as nginx's `proxy_add_x_forwarded_for` does), and a client that
sends a batch of requests with httpx from a chosen source address — each run in a namespace.

Owns: the three scripts and `Site`, which starts apps and proxies (killed by `close()`, also
on failure) and runs client batches. Every wait has a deadline. Needs starlette, uvicorn and
httpx (the dev extra).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from lab import netns
from lab.wait import until

APP = r"""
import json, socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from aitherfwd.asgi import FirewallMiddleware

port, options = int(sys.argv[1]), json.loads(sys.argv[2])

async def hello(request):
    return PlainTextResponse("hello " + request.url.path)

async def login(request):
    return PlainTextResponse("who are you?", status_code=401)

async def stats(request):
    return PlainTextResponse(json.dumps({**app.stats(), "changed_at": app.state.changed_at}))

def logged_in(scope):
    return dict(scope["headers"]).get(b"authorization") == b"Bearer letmein"

routes = [Route(p, hello) for p in ("/", "/admin", "/private")]
routes += [Route("/login", login), Route("/stats", stats)]
inner = Starlette(routes=routes)
app = inner if options.pop("bare", False) else FirewallMiddleware(
    inner, authenticated=logged_in, **options
)
sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # both families, as a proxy would
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("::", port))
sock.listen(1024)
config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
uvicorn.Server(config).run(sockets=[sock])
"""

PROXY = r"""
import http.client, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

listen, upstream_host, upstream_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
listen_port = int(sys.argv[4]) if len(sys.argv) > 4 else 8080
HOP_BY_HOP = ("connection", "transfer-encoding", "content-length", "date", "server")

class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()  # headers and body are two writes: no Nagle wait between them
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        skip = ("connection", "host")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        seen, peer = self.headers.get("X-Forwarded-For"), self.client_address[0]
        headers["X-Forwarded-For"] = f"{seen}, {peer}" if seen else peer
        headers["Host"] = self.headers.get("Host", "app")
        upstream = http.client.HTTPConnection(upstream_host, upstream_port, timeout=10)
        try:
            upstream.request("GET", self.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((listen, listen_port), Proxy)
print("ready", flush=True)
server.serve_forever()
"""

FETCH = r"""
import json, sys, time
import httpx

source, requests = sys.argv[1], json.loads(sys.argv[2])
out = []
transport = httpx.HTTPTransport(local_address=source or None)
with httpx.Client(transport=transport, timeout=5) as client:
    for url, headers in requests:
        try:
            answer = client.get(url, headers=headers)
            try:
                body = answer.json()
            except ValueError:
                body = answer.text
            out.append([answer.status_code, body])
        except httpx.HTTPError as exc:
            out.append([0, type(exc).__name__])
print(json.dumps(out))
"""

# polls `url` every `interval` s until the status is `wanted`; prints when, in time.time()
POLL = r"""
import json, sys, time
import httpx

source, url, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline, interval = float(sys.argv[4]), float(sys.argv[5])
transport = httpx.HTTPTransport(local_address=source or None)
end = time.monotonic() + deadline
with httpx.Client(transport=transport, timeout=5) as client:
    first = client.get(url).status_code
    print(json.dumps({"first": first}), flush=True)
    while time.monotonic() < end:
        status = client.get(url).status_code
        if status == wanted:
            print(json.dumps({"at": time.time()}), flush=True)
            break
        time.sleep(interval)
    else:
        print(json.dumps({"at": None}), flush=True)
"""


class Site:
    """Apps and proxies in namespaces; `fetch` runs a client batch. Close it (or use `with`)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Site:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def _spawn(
        self, ns: str, script: str, *args: str, log: Path | None = None
    ) -> subprocess.Popen[str]:
        out = log.open("a") if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            netns.exec_argv(ns, [sys.executable, "-c", script, *args]),
            stdout=subprocess.PIPE if log is None else out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def app(self, ns: str, port: int, options: dict[str, Any], log: Path) -> subprocess.Popen[str]:
        """uvicorn on [::]:port in `ns` (the middleware's options as given); waits until it
        answers."""
        proc = self._spawn(ns, APP, str(port), json.dumps(options), log=log)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited {proc.returncode}: {log.read_text()}")
            probe = f"import socket; socket.create_connection(('::1', {port}), timeout=1)"
            return netns.run(netns.exec_argv(ns, [sys.executable, "-c", probe])).returncode == 0

        until(up, 20, f"the app on port {port}")
        return proc

    def proxy(
        self, ns: str, listen: str, upstream: str, port: int, listen_port: int = 8080
    ) -> None:
        proc = self._spawn(ns, PROXY, listen, upstream, str(port), str(listen_port))
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if line.strip() != "ready":
            raise netns.LabError("the proxy did not start")

    @staticmethod
    def fetch(
        ns: str, source: str, requests: list[tuple[str, dict[str, str]]]
    ) -> list[tuple[int, Any]]:
        """[(status, JSON body or text)] for each (url, headers), from `source` in `ns`."""
        argv = [sys.executable, "-c", FETCH, source, json.dumps(requests)]
        res = netns.run(netns.exec_argv(ns, argv), timeout=60)
        if res.returncode != 0:
            raise netns.LabError(res.stderr)
        return [(int(x[0]), x[1]) for x in json.loads(res.stdout)]

    def poller(
        self, ns: str, source: str, url: str, wanted: int, deadline: float = 10.0
    ) -> subprocess.Popen[str]:
        """A client polling `url` every 2 ms until it answers `wanted`; it prints the first
        status, then the time.time() of the first `wanted` answer."""
        argv = [source, url, str(wanted), str(deadline), "0.002"]
        return self._spawn(ns, POLL, *argv)
