"""A Docker-shaped host for kernel tests and the demo: a bridge in the lab's server
namespace (the "host"), container namespaces behind it, and Docker's own netfilter rules,
written with the `iptables-nft` / `ip6tables-nft` commands Docker uses — without dockerd.

Owns: the bridge (`dk<pid>`, 172.17.0.1/16 and fd77:0:0:17::1/64), containers
(`ContainerNs`, 172.17.0.<n> / fd77:0:0:17::<n>, default routes via the bridge), IP
forwarding and bridge netfilter in the host namespace, Docker's tables as Docker sets them
up (nat: PREROUTING → DOCKER for local destinations, DNAT per published port, MASQUERADE of
the bridge's subnet; filter: FORWARD policy DROP, DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2,
conntrack accept, DOCKER accepts per published port, the bridge's own traffic accepted),
listeners and probes in containers. Everything lives in namespaces of `lab.network.Lab`,
which removes them; processes started here end with `close()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from lab import netns
from lab.netns import must
from lab.network import LISTENER, PROBE, Lab

ECHO = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
def serve(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
for _ in range(1000):
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

SUBNET_V4 = "172.17.0.0/16"
SUBNET_V6 = "fd77:0:0:17::/64"
GATEWAY_V4 = "172.17.0.1"
GATEWAY_V6 = "fd77:0:0:17::1"


def _no_dad(ns: str) -> None:
    """Interfaces created from now on in `ns` skip IPv6 duplicate address detection: their
    link-local addresses are usable at once (no tentative period dropping the first ND)."""
    for key in ("default", "all"):
        must(netns.exec_argv(ns, ["sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"]))


@dataclass
class ContainerNs:
    """One "container": a namespace with one veth on the bridge."""

    ns: str
    index: int  # 2, 3, … (the host side of the bridge is .1)

    @property
    def v4(self) -> str:
        return f"172.17.0.{self.index}"

    @property
    def v6(self) -> str:
        return f"fd77:0:0:17::{self.index}"


@dataclass
class DockerHost:
    """`DockerHost(lab).setup(containers=2)`: the lab's server namespace becomes a Docker
    host. `publish(container, host_port, container_port)` adds Docker's rules for `-p`."""

    lab: Lab
    containers: list[ContainerNs] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _filter: bool = True

    @property
    def host(self) -> str:
        return self.lab.server

    @property
    def bridge(self) -> str:
        return f"dk{os.getpid() % 100000}"

    def setup(self, containers: int = 2, *, filter_rules: bool = True) -> DockerHost:
        """`filter_rules=False`: Docker's NAT only, no filter rules (FORWARD accepts)."""
        h, br = self.host, self.bridge
        _no_dad(h)
        must(["ip", "-n", h, "link", "add", br, "type", "bridge"])
        must(["ip", "-n", h, "addr", "add", f"{GATEWAY_V4}/16", "dev", br])
        must(["ip", "-n", h, "-6", "addr", "add", f"{GATEWAY_V6}/64", "dev", br, "nodad"])
        must(["ip", "-n", h, "link", "set", br, "up"])
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            must(netns.exec_argv(h, ["sysctl", "-qw", key]))
        # Docker loads br_netfilter: bridged (container to container) IPv4/IPv6 packets
        # then traverse the inet forward hook like routed ones.
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            must(netns.exec_argv(h, ["sysctl", "-qw", f"net.bridge.{key}=1"]))
        for i in range(2, containers + 2):
            self.containers.append(self._container(i))
        self._docker_rules(filter_rules)
        return self

    def _container(self, index: int) -> ContainerNs:
        c = ContainerNs(self.lab._netns(), index)
        _no_dad(c.ns)
        outer = f"dv{os.getpid() % 100000}x{index}"
        veth = ["type", "veth", "peer", "name", "eth0", "netns", c.ns]
        must(["ip", "link", "add", outer, "netns", self.host, *veth])
        must(["ip", "-n", self.host, "link", "set", outer, "master", self.bridge, "up"])
        must(["ip", "-n", c.ns, "addr", "add", f"{c.v4}/16", "dev", "eth0"])
        must(["ip", "-n", c.ns, "-6", "addr", "add", f"{c.v6}/64", "dev", "eth0", "nodad"])
        must(["ip", "-n", c.ns, "link", "set", "eth0", "up"])
        must(["ip", "-n", c.ns, "route", "add", "default", "via", GATEWAY_V4])
        must(["ip", "-n", c.ns, "-6", "route", "add", "default", "via", GATEWAY_V6])
        return c

    def _ipt(self, family: int, rule: str) -> None:
        """One iptables-nft command; `rule` is split on spaces into the argument list (its
        values never hold one), no shell."""
        tool = "iptables-nft" if family == 4 else "ip6tables-nft"
        must(netns.exec_argv(self.host, [tool, "-w", *rule.split()]))

    def _docker_rules(self, filter_rules: bool) -> None:
        """What dockerd writes for its default bridge (with `ip6tables: true`)."""
        br = self.bridge
        self._filter = filter_rules
        for fam, subnet in ((4, SUBNET_V4), (6, SUBNET_V6)):
            nat = [
                "-N DOCKER",
                "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
                f"-A POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE",
                f"-A DOCKER -i {br} -j RETURN",
            ]
            for rule in nat:
                self._ipt(fam, f"-t nat {rule}")
            if not filter_rules:
                continue
            for rule in [
                "-N DOCKER",
                "-N DOCKER-ISOLATION-STAGE-1",
                "-N DOCKER-ISOLATION-STAGE-2",
                "-N DOCKER-USER",
                "-P FORWARD DROP",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
                f"-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                f"-A FORWARD -o {br} -j DOCKER",
                f"-A FORWARD -i {br} ! -o {br} -j ACCEPT",
                f"-A FORWARD -i {br} -o {br} -j ACCEPT",
                f"-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2",
                "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
                f"-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP",
                "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
                "-A DOCKER-USER -j RETURN",
            ]:
                self._ipt(fam, rule)

    def publish(self, c: ContainerNs, host_port: int, container_port: int) -> None:
        """`docker run -p host_port:container_port` (tcp), both families."""
        br = self.bridge
        for fam, addr in ((4, c.v4), (6, c.v6)):
            dest = f"{addr}:{container_port}" if fam == 4 else f"[{addr}]:{container_port}"
            self._ipt(
                fam,
                f"-t nat -A DOCKER ! -i {br} -p tcp -m tcp --dport {host_port}"
                f" -j DNAT --to-destination {dest}",
            )
            if self._filter:
                self._ipt(
                    fam,
                    f"-A DOCKER -d {addr} ! -i {br} -o {br} -p tcp -m tcp"
                    f" --dport {container_port} -j ACCEPT",
                )

    def listen(self, ns: str, tcp: list[int], hold: list[int] | None = None) -> None:
        """TCP listeners (v4 and v6) in namespace `ns` — a container's or a client's;
        connections to `hold` ports stay open."""
        held = ",".join(map(str, hold or []))
        self._serve(ns, [sys.executable, "-c", LISTENER, ",".join(map(str, tcp)), "", held])

    def echo(self, ns: str, port: int) -> None:
        """A TCP echo server (v4 and v6) in namespace `ns`, for connections that must keep
        working (at most 1,000 connections)."""
        self._serve(ns, [sys.executable, "-c", ECHO, str(port)])

    def _serve(self, ns: str, argv: list[str]) -> None:
        proc = subprocess.Popen(
            netns.exec_argv(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._procs.append(proc)
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if line.strip() != "ready":
            raise netns.LabError(f"listener failed: {proc.stderr.read() if proc.stderr else ''}")

    def probe(
        self, ns: str, addr: str, port: int, *, count: int = 1, timeout: float = 1.0
    ) -> list[str]:
        """TCP connections from namespace `ns` ("ok", "refused", "timeout", …); ≤ 1000."""
        count = min(count, 1000)
        argv = [sys.executable, "-c", PROBE, "tcp", addr, str(port), str(count), str(timeout), ""]
        res = self.lab.exec(ns, argv, timeout=count * timeout + 30)
        if res.returncode != 0:
            raise netns.LabError(res.stderr)
        out: list[str] = json.loads(res.stdout)
        return out

    def tcp(self, ns: str, addr: str, port: int, timeout: float = 1.0) -> str:
        return self.probe(ns, addr, port, timeout=timeout)[0]

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(timeout=10)
        self._procs.clear()
