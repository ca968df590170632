"""The demo's ASGI middleware chapter (lab/asgisite.py): a Starlette app under uvicorn with
`aitherfwd.asgi.FirewallMiddleware` in the demo's server namespace, following the running
daemon over its control socket, and a reverse proxy in the client namespace (the "edge")
that appends the client to X-Forwarded-For. A user on an extra address of the client
namespace reaches the app only through the proxy, so the kernel sees the proxy, never the
user: the middleware judges the user. A `path_prefix` rule added to the daemon's policy at
run time denies a path; a daemon block refuses the user within milliseconds; unblock.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.asgisite import Site
from lab.daemon import DaemonProc
from lab.network import Client, Lab
from lab.wait import until

APP_PORT = 8050  # in the default policy's Services range (8000-8099): internal_services allows
PROXY_PORT = 8090  # the client namespace's 8080 is the egress chapter's listener
USER = "10.77.1.10"  # an extra address of the client namespace, behind the proxy
RULE = """
  - name: private_paths
    path_prefix: /private
    action: deny
    description: "added while the daemon runs: layer 7, enforced by the ASGI middleware"
"""


def demo_middleware(
    lab: Lab,
    client: Client,
    daemon: DaemonProc,
    *,
    say: Callable[[str], None],
    client_cmd: Callable[..., str],
    reloaded: Callable[[DaemonProc, int], bool],
    generation: int = 5,  # the demo's reloads before this chapter: 3306, egress, containers
) -> int:
    say(
        f"\nThe ASGI middleware: uvicorn + Starlette with FirewallMiddleware on "
        f"{client.server_v4}:{APP_PORT} (server namespace), a reverse proxy on "
        f"{client.v4}:{PROXY_PORT} (client namespace) appending X-Forwarded-For, the user at "
        f"{USER} behind it: the kernel sees only the proxy"
    )
    text = daemon.policy.read_text()  # first of `rules:`, or an earlier allow would match
    at = text.index("\n  - ", text.index("\nrules:"))  # before the first rule
    daemon.policy.write_text(text[:at] + RULE.rstrip("\n") + text[at:])
    if not reloaded(daemon, generation):
        return 1
    say("  the policy gains rule private_paths (path_prefix: /private, deny) at the top")
    lab.add_address(client, f"{USER}/24")
    url = f"http://{client.v4}:{PROXY_PORT}"
    with tempfile.TemporaryDirectory(prefix="afw-demo-asgi-") as tmp, Site() as site:
        options = {"socket": str(daemon.socket), "trusted_proxies": [f"{client.v4}/32"]}
        site.app(lab.server, APP_PORT, options, Path(tmp) / "app.log")
        site.proxy(client.ns, client.v4, client.server_v4, APP_PORT, listen_port=PROXY_PORT)

        def get(*paths: str) -> list[tuple[int, object]]:
            return site.fetch(client.ns, USER, [(url + p, {}) for p in paths])

        try:
            until(lambda: get("/private")[0][0] == 403, 10, "the middleware to follow the daemon")
        except TimeoutError:
            say("  the middleware did not follow the daemon")
            return 1
        for path, (status, body) in zip(["/", "/private"], get("/", "/private"), strict=True):
            say(f"  {USER} GET {path} (via the proxy) -> {status} {json.dumps(body)}")
        poller = site.poller(client.ns, USER, url + "/", 403)
        if poller.stdout is None or json.loads(poller.stdout.readline()) != {"first": 200}:
            return 1
        block = {"address": USER, "ttl": "1m"}
        say(
            f"\nPOST /v1/blocks {json.dumps(block)} on the control socket (= aitherfwd block "
            f"{USER} --ttl 1m), timed, while {USER} polls / every 2 ms"
        )
        asked = time.time()
        status, _ = daemon.request("POST", "/v1/blocks", block)
        seen = json.loads(poller.stdout.readline())["at"]
        if status != 200 or seen is None:
            say("  the block never reached the middleware")
            return 1
        say(
            f"  the middleware refused {USER} {(seen - asked) * 1000:.0f} ms after the block "
            "was asked (the daemon's watch stream; the kernel never sees this client)"
        )
        status, body = get("/")[0]
        say(f"  {USER} GET / (via the proxy) -> {status} {json.dumps(body)}")
        client_cmd(daemon, "lift it", ["unblock", USER])
        try:
            until(lambda: get("/")[0][0] == 200, 5, "the unblock to reach the middleware")
        except TimeoutError:
            say("  the unblock did not reach the middleware")
            return 1
        say(f"  {USER} GET / (via the proxy) -> 200 again")
    return 0
