"""A small network lab for kernel tests, benchmarks and the demo: veth pairs between
namespaces, listeners, and probes that send real packets.

Owns: a server namespace and N client namespaces (from lab/netns.py), each client on its
own veth link (10.77.<i>.2 / fd77:0:0:<i>::2, the server side .1 / ::1), TCP/UDP listeners
in the server namespace, and TCP/UDP probes from clients. Every namespace and process is
removed on exit, also on failure. Only 10.77.0.0/16 and fd77::/16 are ever used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from types import TracebackType

from lab import netns
from lab.netns import must, run

LISTENER = r"""
import selectors, socket, sys
tcp = [int(p) for p in sys.argv[1].split(",") if p]
udp = [int(p) for p in sys.argv[2].split(",") if p]
hold = {int(p) for p in sys.argv[3].split(",") if p}  # keep these connections open
held = []
sel = selectors.DefaultSelector()
for port in tcp:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(1024); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "tcp")
for port in udp:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            if key.data == "tcp":
                conn, _ = key.fileobj.accept()
                if key.fileobj.getsockname()[1] in hold and len(held) < 1000:
                    held.append(conn)
                else:
                    conn.close()
            else:
                data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(b"ok", peer)
        except OSError:
            pass
"""

PROBE = r"""
import errno, json, socket, sys, time
kind, addr, port, count, timeout, source = sys.argv[1:7]
port, count, timeout = int(port), int(count), float(timeout)
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = []
for _ in range(count):
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    try:
        if kind == "tcp":
            s.connect((addr, port)); out.append("ok")
        else:
            s.connect((addr, port)); s.send(b"hi"); s.recv(16); out.append("ok")
    except ConnectionRefusedError:
        out.append("refused")
    except socket.timeout:
        out.append("timeout")
    except OSError as e:
        unreachable = e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
        out.append("unreachable" if unreachable else "error:" + str(e.errno))
    finally:
        s.close()
print(json.dumps(out))
"""


@dataclass
class Client:
    ns: str
    index: int

    @property
    def v4(self) -> str:
        return f"10.77.{self.index}.2"

    @property
    def v6(self) -> str:
        return f"fd77:0:0:{self.index}::2"

    @property
    def server_v4(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def server_v6(self) -> str:
        return f"fd77:0:0:{self.index}::1"

    @property
    def dev(self) -> str:
        """The client's end of its veth link (in the client namespace)."""
        return f"ac{os.getpid() % 100000}x{self.index}"

    @property
    def server_dev(self) -> str:
        """The server's end of the client's veth link (in the server namespace)."""
        return f"as{os.getpid() % 100000}x{self.index}"


@dataclass
class Lab:
    """`with Lab(clients=2) as lab:` — a server namespace and client namespaces."""

    clients_wanted: int = 1
    server: str = ""
    clients: list[Client] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> Lab:
        try:
            self.server = self._netns()
            for i in range(1, self.clients_wanted + 1):
                self.clients.append(self._link(Client(self._netns(), i)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait(timeout=10)
        for ns in self._namespaces:
            netns.delete(ns)

    def _netns(self) -> str:
        name = netns.create()
        self._namespaces.append(name)
        return name

    def _link(self, c: Client) -> Client:
        srv_if, cli_if = c.server_dev, c.dev
        must(
            [
                "ip",
                "link",
                "add",
                srv_if,
                "netns",
                self.server,
                "type",
                "veth",
                "peer",
                "name",
                cli_if,
                "netns",
                c.ns,
            ]
        )
        for ns, dev, v4, v6 in (
            (self.server, srv_if, c.server_v4, c.server_v6),
            (c.ns, cli_if, c.v4, c.v6),
        ):
            must(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev])
            must(["ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            must(["ip", "-n", ns, "link", "set", dev, "up"])
        return c

    def add_address(self, client: Client, address: str) -> None:
        """An extra source address on a client (same /24 or /64 as its link)."""
        extra = ["nodad"] if ":" in address else []
        must(["ip", "-n", client.ns, "addr", "add", address, "dev", client.dev, *extra])

    def exec(
        self, ns: str, argv: list[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run(netns.exec_argv(ns, argv), timeout=timeout)

    def listen(
        self,
        tcp: list[int],
        udp: list[int] | None = None,
        hold: list[int] | None = None,
        ns: str | None = None,
    ) -> None:
        """TCP/UDP listeners in the server namespace (or `ns`); connections to `hold` ports
        stay open."""
        proc = subprocess.Popen(
            netns.exec_argv(
                ns or self.server,
                [
                    sys.executable,
                    "-c",
                    LISTENER,
                    ",".join(map(str, tcp)),
                    ",".join(map(str, udp or [])),
                    ",".join(map(str, hold or [])),
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        # the listener prints "ready" once bound, or dies
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if line.strip() != "ready":
            raise netns.LabError(f"listener failed: {proc.stderr.read() if proc.stderr else ''}")

    def hold_connection(self, client: Client, addr: str, port: int, seconds: float = 60) -> None:
        """A TCP connection from the client that stays ESTABLISHED (killed on exit)."""
        script = (
            "import socket, sys, time\n"
            "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
            "print('up', flush=True)\n"
            "time.sleep(float(sys.argv[3]))\n"
        )
        argv = [sys.executable, "-c", script, addr, str(port), str(seconds)]
        proc = subprocess.Popen(
            netns.exec_argv(client.ns, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        if proc.stdout is None or proc.stdout.readline().strip() != "up":
            raise netns.LabError(f"could not connect: {proc.stderr.read() if proc.stderr else ''}")

    def probe(
        self,
        client: Client,
        addr: str,
        port: int,
        *,
        proto: str = "tcp",
        count: int = 1,
        timeout: float = 1.0,
        source: str = "",
    ) -> list[str]:
        """Real connections (or datagrams) from a client; bounded by count ≤ 1000."""
        count = min(count, 1000)
        res = self.exec(
            client.ns,
            [sys.executable, "-c", PROBE, proto, addr, str(port), str(count), str(timeout), source],
            timeout=count * timeout + 30,
        )
        if res.returncode != 0:
            raise netns.LabError(res.stderr)
        result: list[str] = json.loads(res.stdout)
        return result

    def tcp(
        self, client: Client, addr: str, port: int, timeout: float = 1.0, source: str = ""
    ) -> str:
        return self.probe(client, addr, port, timeout=timeout, source=source)[0]
