"""A small network lab for kernel tests and the demo: namespaces, veth pairs, listeners,
and probes that send real packets.

Owns: creating `afw-<pid>-<n>` namespaces (a server and N clients, each client on its own
veth link: 10.77.<i>.2 / fd77:0:0:<i>::2, the server side .1 / ::1), TCP/UDP listeners in
the server namespace, and TCP/UDP probes from clients. Every namespace and process is
removed on exit, also on failure. Only 10.77.0.0/16 and fd77::/16 are ever used.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType

_seq = itertools.count()

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


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def must(argv: list[str]) -> None:
    res = run(argv)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")


def wait_until(predicate: object, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {deadline_s}s waiting for {what}")


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
            run(["ip", "netns", "del", ns])

    def _netns(self) -> str:
        name = f"afw-{os.getpid()}-{next(_seq)}"
        must(["ip", "netns", "add", name])
        self._namespaces.append(name)
        must(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def _link(self, c: Client) -> Client:
        tag = f"{os.getpid() % 100000}x{c.index}"
        srv_if, cli_if = f"as{tag}", f"ac{tag}"
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
        dev = f"ac{os.getpid() % 100000}x{client.index}"
        extra = ["nodad"] if ":" in address else []
        must(["ip", "-n", client.ns, "addr", "add", address, "dev", dev, *extra])

    def exec(
        self, ns: str, argv: list[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *argv], timeout=timeout)

    def listen(
        self, tcp: list[int], udp: list[int] | None = None, hold: list[int] | None = None
    ) -> None:
        """TCP/UDP listeners in the server namespace; connections to `hold` ports stay open."""
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.server,
                sys.executable,
                "-c",
                LISTENER,
                ",".join(map(str, tcp)),
                ",".join(map(str, udp or [])),
                ",".join(map(str, hold or [])),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the listener prints "ready" once bound, or dies
        if line.strip() != "ready":
            raise RuntimeError(f"listener failed: {proc.stderr.read() if proc.stderr else ''}")

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
            ["ip", "netns", "exec", client.ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "up":
            raise RuntimeError(f"could not connect: {proc.stderr.read() if proc.stderr else ''}")

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
            raise RuntimeError(res.stderr)
        result: list[str] = json.loads(res.stdout)
        return result

    def tcp(
        self, client: Client, addr: str, port: int, timeout: float = 1.0, source: str = ""
    ) -> str:
        return self.probe(client, addr, port, timeout=timeout, source=source)[0]
