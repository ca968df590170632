"""The demo's container chapter: a Docker-shaped host (lab/containers.py: a bridge, a
container behind it, Docker's own DNAT and iptables-nft rules) in the demo's server
namespace, with the daemon running. A published port is closed by the default policy,
opened by a rule added at run time, and a banned client is cut off from it."""

from __future__ import annotations

from collections.abc import Callable

from lab.containers import DockerHost
from lab.daemon import DaemonProc
from lab.network import Client, Lab

PUBLISHED = 9090  # no rule of policies/default.yaml names it: the default decides
RULE = """
  - name: published_web
    dest_ports: [9090]
    protocol: tcp
    action: allow
    applies_to: containers
    description: "added while the daemon runs: the container's published port"
"""


def demo_containers(
    lab: Lab,
    client: Client,
    daemon: DaemonProc,
    *,
    say: Callable[[str], None],
    attempt: Callable[[Lab, Client, str, int, str], None],
    client_cmd: Callable[..., str],
    reloaded: Callable[[DaemonProc, int], bool],
    generation: int = 4,  # the demo's reloads before this chapter: 3306, then egress
) -> int:
    host = DockerHost(lab).setup(containers=1)
    try:
        (web,) = host.containers
        host.publish(web, PUBLISHED, 80)
        host.listen(web.ns, [80])
        say(
            f"\nContainers: bridge {host.bridge} with container {web.v4} publishing "
            f"{PUBLISHED} -> 80 (`docker run -p {PUBLISHED}:80`: Docker's own DNAT and "
            "iptables-nft FORWARD rules); Docker alone would open it to everyone"
        )
        attempt(lab, client, client.server_v4, PUBLISHED, "tcp")
        text = daemon.policy.read_text()  # the rule goes to the end of `rules:`
        at = text.find("\negress:")
        daemon.policy.write_text(text + RULE if at < 0 else text[:at] + RULE + text[at:])
        if not reloaded(daemon, generation):
            return 1
        say(f"  the policy gains rule published_web (applies_to: containers, port {PUBLISHED})")
        attempt(lab, client, client.server_v4, PUBLISHED, "tcp")
        client_cmd(
            daemon,
            "the evaluator answers for routed traffic too",
            [
                *("evaluate", "--direction", "forward", "--source", client.v4, "--dest", web.v4),
                *("--port", str(PUBLISHED)),
            ],
        )
        client_cmd(daemon, "ban the client", ["block", client.v4, "--ttl", "1m"])
        attempt(lab, client, client.server_v4, PUBLISHED, "tcp")
        client_cmd(daemon, "lift it", ["unblock", client.v4])
        return 0
    finally:
        host.close()
