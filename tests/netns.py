"""Throwaway network namespaces for the kernel tests.

The kernel tests need real packets crossing a real netfilter hook, but they must never touch the
firewall or the traffic of the machine they run on.  This module builds small, private topologies
out of network namespaces and veth pairs, runs tiny TCP/UDP listeners in a "server" namespace and
probes them from "client" namespaces:

    with Topology(clients=2) as topo:
        listeners = topo.start_listeners(tcp_ports=[22], udp_ports=[53])
        client = topo.clients[0]
        assert tcp_connect(client.ns, client.server_v4, 22) == "ok"
        assert udp_probe(client.ns, client.server_v6, 53) == "ok"

Safety rules enforced here:

* Only namespaces created by this process (``afw-<pid>-<n>``) are ever entered, configured,
  probed from or deleted; the root network namespace is never modified.
* Only addresses from ``10.77.0.0/16`` and ``fd77::/16`` are configured or probed, and the
  namespaces have no route to anything outside their own veth links.
* Every namespace is deleted when its context exits, even when the body raised; what is left
  over (e.g. after an interrupted run) is removed by :func:`cleanup_all`, which also runs at
  interpreter exit.  ``python -m tests.netns`` removes namespaces left by dead processes.
* Every wait is bounded both in time and in iterations (:func:`wait_until`), every subprocess
  has a timeout, and commands are run with argument lists (no shell).

The module is self-contained: it uses only the standard library and ``ip`` from iproute2
(``ping`` from iputils-ping only for :func:`ping`), and imports nothing from ``aitherfwd``.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Final, Literal, Self

__all__ = [
    "CMD_TIMEOUT",
    "MAX_BATCH",
    "MAX_CLIENTS",
    "NS_PREFIX",
    "V4_NET",
    "V6_NET",
    "Client",
    "HarnessError",
    "HarnessTimeout",
    "ListenerEvent",
    "Listeners",
    "ProbeError",
    "ProbeResult",
    "Topology",
    "cleanup_all",
    "create_namespace",
    "delete_namespace",
    "list_harness_namespaces",
    "namespace",
    "ns_exec",
    "ns_popen",
    "ping",
    "tcp_connect",
    "tcp_connect_many",
    "udp_probe",
    "wait_until",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

NS_PREFIX: Final = "afw-"
"""Prefix of every namespace this harness creates: ``afw-<pid>-<n>``."""

V4_NET: Final = ipaddress.IPv4Network("10.77.0.0/16")
"""The only IPv4 range the harness configures or sends to."""

V6_NET: Final = ipaddress.IPv6Network("fd77::/16")
"""The only IPv6 range the harness configures or sends to."""

MAX_CLIENTS: Final = 100
"""Upper bound on the number of client namespaces of one :class:`Topology`."""

MAX_BATCH: Final = 1000
"""Upper bound on ``count`` of :func:`tcp_connect_many`."""

MAX_PROBE_TIMEOUT: Final = 30.0
"""Upper bound on the per-attempt timeout of a probe, in seconds."""

CMD_TIMEOUT: Final = 30.0
"""Default timeout of one command (``ip ...``, ``ip netns exec ...``), in seconds."""

READY_TIMEOUT: Final = 10.0
"""How long :class:`Listeners` waits for the server script to report ``ready``."""

SETTLE_TIMEOUT: Final = 10.0
"""How long a topology waits for links to come up and IPv6 addresses to leave "tentative"."""

_DELETE_TIMEOUT: Final = 10.0
_TERMINATE_TIMEOUT: Final = 3.0
_MAX_EVENTS: Final = 100_000
_MAX_NAME_ATTEMPTS: Final = 100
_NS_RE: Final = re.compile(r"^afw-(\d+)-(\d+)$")
_NETNS_SYSCTLS: Final = (
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
)

ProbeResult = Literal["ok", "refused", "timeout", "unreachable"]
"""Outcome of one probe.

``ok``: TCP handshake completed / UDP reply received.  ``refused``: TCP RST or ICMP port
unreachable.  ``timeout``: no answer within the timeout (silently dropped).  ``unreachable``:
ICMP host/net unreachable or administratively prohibited, or no route in the client namespace.
"""

_RESULTS: Final[dict[str, ProbeResult]] = {
    "ok": "ok",
    "refused": "refused",
    "timeout": "timeout",
    "unreachable": "unreachable",
}

# --------------------------------------------------------------------------------------------
# Embedded scripts, run with ``ip netns exec NS python -I -c SCRIPT ARGS...``
# --------------------------------------------------------------------------------------------

SERVER_SCRIPT: Final = r'''
"""Listener: argv[1] = TCP ports, argv[2] = UDP ports (comma separated), all on [::]."""
import os
import selectors
import socket
import sys


def ports(arg):
    return [int(p) for p in arg.split(",") if p]


def bind(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.setblocking(False)
    return s


def peer_of(addr):
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") and "." in host else host


sel = selectors.DefaultSelector()
for port in ports(sys.argv[1]):
    s = bind(socket.SOCK_STREAM, port)
    s.listen(1024)
    sel.register(s, selectors.EVENT_READ, ("tcp", port))
for port in ports(sys.argv[2]):
    sel.register(bind(socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", port))
sel.register(0, selectors.EVENT_READ, ("stdin", 0))
print("ready", flush=True)

while True:
    for key, _ in sel.select():
        proto, port = key.data
        if proto == "stdin":
            if not os.read(0, 4096):
                sys.exit(0)
            continue
        sock = key.fileobj
        try:
            if proto == "tcp":
                conn, addr = sock.accept()
                print("tcp", port, peer_of(addr), flush=True)
                try:
                    conn.settimeout(1.0)
                    conn.sendall(b"ok")
                except OSError:
                    pass
                conn.close()
            else:
                data, addr = sock.recvfrom(65535)
                print("udp", port, peer_of(addr), flush=True)
                sock.sendto(b"ok", addr)
        except OSError:
            pass
'''
"""Listener run in the server namespace; prints ``ready``, then one line per TCP connection or
UDP datagram (``tcp|udp PORT PEER``).  Exits when its stdin reaches EOF."""

PROBE_SCRIPT: Final = r'''
"""Probe: MODE(tcp|udp) ADDR PORT TIMEOUT COUNT INTERVAL SOURCE; one result per line."""
import errno
import os
import socket
import sys
import time

mode, addr, port, timeout, count, interval, source = sys.argv[1:8]
port, timeout, count, interval = int(port), float(timeout), int(count), float(interval)
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
kind = socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM
# EACCES: ICMPv6 "administratively prohibited" is reported as EACCES by Linux.
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES}


def classify(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if exc.errno in UNREACHABLE:
        return "unreachable"
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "error:" + name + ":" + str(exc).replace("\n", " ")


def once():
    s = socket.socket(family, kind)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        if kind == socket.SOCK_DGRAM:
            s.send(b"probe")
            s.recv(512)
            return "ok"
        # Read the listener's greeting so that the close is a clean FIN, not an RST.
        s.settimeout(min(timeout, 1.0))
        try:
            s.recv(16)
        except OSError:
            pass
        return "ok"
    except TimeoutError as exc:
        # An ICMP error that the kernel treats as soft (e.g. ICMPv6 to a TCP SYN, until the
        # retransmission) is only visible through SO_ERROR.
        soft = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return classify(OSError(soft, os.strerror(soft)) if soft else exc)
    except OSError as exc:
        return classify(exc)
    finally:
        s.close()


for i in range(count):
    if i and interval > 0:
        time.sleep(interval)
    print(once(), flush=True)
'''
"""Probe run in a client namespace; prints one result word per attempt."""

_SYSCTL_SCRIPT: Final = r"""
import sys
for item in sys.argv[1:]:
    key, _, value = item.partition("=")
    try:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    except FileNotFoundError:
        sys.exit("sysctl not available in this namespace: " + key)
"""


# --------------------------------------------------------------------------------------------
# Errors and generic helpers
# --------------------------------------------------------------------------------------------


class HarnessError(RuntimeError):
    """The harness could not set up, run or tear down something."""


class HarnessTimeout(HarnessError):
    """A bounded wait ran out of time."""


class ProbeError(HarnessError):
    """A probe failed in an unexpected way (not one of the :data:`ProbeResult` outcomes)."""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it returns true.

    The loop is bounded both by the deadline (``timeout`` seconds) and by a number of polls
    derived from ``timeout / interval``.  Raises :class:`HarnessTimeout` when it gives up.
    """
    if timeout <= 0 or interval <= 0:
        raise ValueError("timeout and interval must be positive")
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        if predicate():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    if predicate():
        return
    raise HarnessTimeout(f"timed out after {timeout:.1f}s waiting for {what}")


def _fmt(argv: Sequence[str]) -> str:
    """Render a command for error messages, eliding embedded scripts."""
    return shlex.join(a if len(a) <= 80 else "<script>" for a in argv)


def _run(
    argv: Sequence[str],
    *,
    timeout: float = CMD_TIMEOUT,
    check: bool = True,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell) with a timeout, capturing text output."""
    args = list(argv)
    try:
        if stdin_text is None:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        else:
            proc = subprocess.run(
                args, input=stdin_text, capture_output=True, text=True, timeout=timeout, check=False
            )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout:.1f}s: {_fmt(args)}") from exc
    except FileNotFoundError as exc:
        raise HarnessError(f"command not found: {args[0]}") from exc
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed (exit {proc.returncode}): {_fmt(args)}\n{proc.stderr.strip()}"
        )
    return proc


def _terminate(proc: subprocess.Popen[Any], timeout: float = _TERMINATE_TIMEOUT) -> None:
    """Stop a process started with ``start_new_session=True`` (SIGTERM, then SIGKILL).

    The signal goes to the process group the harness created for it, and only while the
    process has not been reaped (so its pid cannot have been reused).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def _ip_of(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse ``addr`` and check that it lies in the harness's address ranges."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError as exc:
        raise HarnessError(f"not an IP address: {addr!r}") from exc
    if ip not in (V4_NET if ip.version == 4 else V6_NET):
        raise HarnessError(f"address {addr} is outside the harness ranges {V4_NET} / {V6_NET}")
    return ip


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise HarnessError(f"invalid port: {port}")


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------

_counter = itertools.count(1)
_lock = threading.Lock()
_owned: set[str] = set()


def _require_environment() -> None:
    if os.geteuid() != 0:
        raise HarnessError("network namespaces need root")
    if shutil.which("ip") is None:
        raise HarnessError("ip(8) not found: install the Debian package iproute2")


def _require_owned(ns: str) -> None:
    """Refuse to act on any namespace this process did not create."""
    with _lock:
        owned = ns in _owned
    if not owned:
        raise HarnessError(f"namespace {ns!r} was not created by this harness process")


def list_harness_namespaces() -> list[str]:
    """Names of all ``afw-<pid>-<n>`` namespaces on the machine (of any process)."""
    proc = _run(["ip", "netns", "list"])
    names = (line.split()[0] for line in proc.stdout.splitlines() if line.strip())
    return sorted(name for name in names if _NS_RE.match(name))


def _namespace_exists(ns: str) -> bool:
    proc = _run(["ip", "netns", "list"])
    return any(line.split()[0] == ns for line in proc.stdout.splitlines() if line.strip())


def create_namespace() -> str:
    """Create an empty network namespace named ``afw-<pid>-<n>`` and return its name.

    The caller owns it and must delete it with :func:`delete_namespace` (or rely on
    :func:`cleanup_all`); prefer :func:`namespace` or :class:`Topology`, which do that.
    """
    _require_environment()
    pid = os.getpid()
    for _ in range(_MAX_NAME_ATTEMPTS):
        name = f"{NS_PREFIX}{pid}-{next(_counter)}"
        with _lock:
            _owned.add(name)  # registered first, so an interruption cannot leak it
        proc = _run(["ip", "netns", "add", name], check=False)
        if proc.returncode == 0:
            return name
        with _lock:
            _owned.discard(name)
        if "File exists" not in proc.stderr:
            raise HarnessError(f"ip netns add {name} failed: {proc.stderr.strip()}")
        # A leftover of an earlier process with the same pid: try the next counter value.
    raise HarnessError("could not find a free namespace name")


def _netns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    if proc.returncode != 0:
        return []
    me = os.getpid()
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit() and int(tok) != me]


def delete_namespace(ns: str, *, timeout: float = _DELETE_TIMEOUT) -> None:
    """Kill every process left inside ``ns``, delete it and wait until it is gone.

    Only namespaces created by this process are accepted.  Deleting a namespace that no
    longer exists is not an error.
    """
    _require_owned(ns)
    if _namespace_exists(ns):
        pids = _netns_pids(ns)
        if pids:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_until(
                lambda: not _netns_pids(ns),
                timeout,
                interval=0.05,
                what=f"processes in {ns} to exit",
            )
        proc = _run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0 and _namespace_exists(ns):
            raise HarnessError(f"ip netns del {ns} failed: {proc.stderr.strip()}")
        wait_until(
            lambda: not _namespace_exists(ns), timeout, interval=0.05, what=f"{ns} to disappear"
        )
    with _lock:
        _owned.discard(ns)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """Context manager yielding a fresh, empty namespace (only ``lo``, down) that is deleted
    on exit, whatever happens in the body."""
    ns = create_namespace()
    try:
        yield ns
    finally:
        delete_namespace(ns)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_all(*, stale: bool = False) -> list[str]:
    """Delete every namespace this process created and has not deleted yet.

    With ``stale=True`` also delete ``afw-<pid>-<n>`` namespaces whose creating process no
    longer exists (leftovers of killed test runs).  Namespaces of live processes are never
    touched.  Returns the names removed; raises :class:`HarnessError` listing any failures
    after trying all of them.  Independent of pytest; also registered with :mod:`atexit`.
    """
    with _lock:
        todo = sorted(_owned)
    if stale and shutil.which("ip") is not None:
        me = os.getpid()
        for name in list_harness_namespaces():
            match = _NS_RE.match(name)
            if match is None or name in todo:
                continue
            pid = int(match.group(1))
            if pid != me and not _pid_alive(pid):
                with _lock:
                    _owned.add(name)  # adopt the orphan so delete_namespace accepts it
                todo.append(name)
    removed: list[str] = []
    errors: list[str] = []
    for name in todo:
        try:
            delete_namespace(name)
        except HarnessError as exc:
            errors.append(f"{name}: {exc}")
        else:
            removed.append(name)
    if errors:
        raise HarnessError("namespace cleanup failed:\n" + "\n".join(errors))
    return removed


def _atexit_cleanup() -> None:
    try:
        cleanup_all()
    except Exception as exc:  # never let interpreter exit fail on cleanup
        print(f"netns harness: {exc}", file=sys.stderr)


atexit.register(_atexit_cleanup)


# --------------------------------------------------------------------------------------------
# Running things inside namespaces
# --------------------------------------------------------------------------------------------


def ns_exec(
    ns: str,
    argv: Sequence[str],
    *,
    timeout: float = CMD_TIMEOUT,
    check: bool = False,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``) and wait for it.

    Output is captured as text.  Raises :class:`HarnessError` on timeout, and on a non-zero
    exit status when ``check`` is true.
    """
    _require_owned(ns)
    return _run(
        ["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check, stdin_text=stdin_text
    )


def ns_popen(
    ns: str,
    argv: Sequence[str],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background inside namespace ``ns``, in its own process group.

    The caller must stop it; :meth:`Topology.popen` does that automatically.  Deleting the
    namespace kills whatever still runs inside it.
    """
    _require_owned(ns)
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def _python_argv(script: str, *args: str) -> list[str]:
    return [sys.executable, "-I", "-c", script, *args]


def _set_sysctls(ns: str, settings: Iterable[str]) -> None:
    proc = ns_exec(ns, _python_argv(_SYSCTL_SCRIPT, *settings))
    if proc.returncode != 0:
        raise HarnessError(f"cannot configure {ns}: {proc.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------


def _probe(
    ns: str,
    mode: Literal["tcp", "udp"],
    addr: str,
    port: int,
    *,
    timeout: float,
    count: int = 1,
    interval: float = 0.0,
    source: str | None = None,
) -> list[ProbeResult]:
    _require_owned(ns)
    dst = _ip_of(addr)
    if source is not None and _ip_of(source).version != dst.version:
        raise HarnessError(f"source {source} and destination {addr} differ in address family")
    _check_port(port)
    if not 0 < timeout <= MAX_PROBE_TIMEOUT:
        raise HarnessError(f"probe timeout must be in (0, {MAX_PROBE_TIMEOUT}]: {timeout}")
    if not 1 <= count <= MAX_BATCH:
        raise HarnessError(f"count must be in [1, {MAX_BATCH}]: {count}")
    if not 0 <= interval <= 1:
        raise HarnessError(f"interval must be in [0, 1]: {interval}")
    args = [mode, str(dst), str(port), repr(timeout), str(count), repr(interval), source or ""]
    # Worst case per attempt: the connect timeout plus up to 1 s reading the greeting.
    budget = count * (timeout + interval + 1.0) + 15.0
    proc = ns_exec(ns, _python_argv(PROBE_SCRIPT, *args), timeout=budget)
    if proc.returncode != 0:
        raise ProbeError(f"{mode} probe in {ns} failed: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    if len(lines) != count:
        raise ProbeError(f"{mode} probe in {ns}: expected {count} results, got {lines!r}")
    results: list[ProbeResult] = []
    for line in lines:
        result = _RESULTS.get(line)
        if result is None:
            raise ProbeError(f"{mode} probe {ns} -> [{addr}]:{port}: {line}")
        results.append(result)
    return results


def tcp_connect(
    ns: str, addr: str, port: int, timeout: float = 1.0, *, source: str | None = None
) -> ProbeResult:
    """Open one TCP connection from namespace ``ns`` to ``addr``:``port``.

    Returns ``"ok"``, ``"refused"`` (RST / port unreachable), ``"timeout"`` (dropped) or
    ``"unreachable"`` (ICMP unreachable / prohibited, no route).  ``source`` binds the client
    socket to that local address first (see :meth:`Topology.add_client_address`).  Anything
    else (e.g. ``source`` not configured) raises :class:`ProbeError`.
    """
    return _probe(ns, "tcp", addr, port, timeout=timeout, source=source)[0]


def tcp_connect_many(
    ns: str,
    addr: str,
    port: int,
    count: int,
    timeout: float = 1.0,
    *,
    source: str | None = None,
    interval: float = 0.0,
) -> list[ProbeResult]:
    """Make ``count`` (at most :data:`MAX_BATCH`) sequential TCP connections in one subprocess.

    Meant for rate-limit tests: one process start instead of ``count``.  ``interval`` seconds
    (at most 1) are waited between attempts.  Results are in attempt order, as for
    :func:`tcp_connect`.
    """
    return _probe(
        ns, "tcp", addr, port, timeout=timeout, count=count, interval=interval, source=source
    )


def udp_probe(
    ns: str, addr: str, port: int, timeout: float = 1.0, *, source: str | None = None
) -> ProbeResult:
    """Send one UDP datagram from ``ns`` to ``addr``:``port`` and wait for the reply.

    Returns ``"ok"`` (reply received), ``"refused"`` (ICMP port unreachable), ``"timeout"``
    or ``"unreachable"``.  The :class:`Listeners` UDP sockets answer every datagram.
    """
    return _probe(ns, "udp", addr, port, timeout=timeout, source=source)[0]


def ping(ns: str, addr: str, timeout: float = 1.0, *, source: str | None = None) -> bool:
    """Send one ICMP echo request (``ping -c1 -W<timeout>``) from ``ns``; true if answered.

    Needs ``ping`` from the Debian package iputils-ping; raises :class:`HarnessError` with
    install instructions if it is missing.
    """
    _require_owned(ns)
    dst = _ip_of(addr)
    if source is not None and _ip_of(source).version != dst.version:
        raise HarnessError(f"source {source} and destination {addr} differ in address family")
    exe = shutil.which("ping")
    if exe is None:
        raise HarnessError(
            "ping(8) not found: install the Debian package iputils-ping "
            "(apt-get install iputils-ping)"
        )
    wait = max(1, math.ceil(min(timeout, MAX_PROBE_TIMEOUT)))
    argv = [exe, f"-{dst.version}", "-n", "-q", "-c", "1", "-W", str(wait)]
    if source is not None:
        argv += ["-I", source]
    proc = ns_exec(ns, [*argv, str(dst)], timeout=wait + 10.0)
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise ProbeError(f"ping in {ns} failed (exit {proc.returncode}): {proc.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenerEvent:
    """One connection accepted or datagram received by :class:`Listeners`."""

    proto: Literal["tcp", "udp"]
    port: int
    peer: str
    """Source address as seen by the server (IPv4 in dotted form, not v4-mapped)."""


class Listeners:
    """TCP and UDP listeners on ``[::]`` (dual stack) in one namespace.

    TCP: every connection is accepted, sent ``b"ok"`` and closed.  UDP: every datagram is
    answered with ``b"ok"``.  Each connection/datagram is recorded as a
    :class:`ListenerEvent`.  Usually created by :meth:`Topology.start_listeners`, which also
    stops it; otherwise call :meth:`stop` (or use it as a context manager).
    """

    def __init__(
        self,
        ns: str,
        tcp_ports: Sequence[int] = (),
        udp_ports: Sequence[int] = (),
        *,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        _require_owned(ns)
        for port in (*tcp_ports, *udp_ports):
            _check_port(port)
        if not tcp_ports and not udp_ports:
            raise HarnessError("Listeners needs at least one TCP or UDP port")
        self.ns = ns
        self.tcp_ports: tuple[int, ...] = tuple(tcp_ports)
        self.udp_ports: tuple[int, ...] = tuple(udp_ports)
        self._events: list[ListenerEvent] = []
        self._output: list[str] = []
        self._cond = threading.Condition()
        self._ready = False
        self._proc: subprocess.Popen[str] = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                *_python_argv(
                    SERVER_SCRIPT,
                    ",".join(map(str, self.tcp_ports)),
                    ",".join(map(str, self.udp_ports)),
                ),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._read, name=f"netns-listeners-{ns}", daemon=True
        )
        self._reader.start()
        try:
            wait_until(
                lambda: self._ready or self._proc.poll() is not None,
                ready_timeout,
                what=f"listeners in {ns}",
            )
            if not self._ready:
                self._reader.join(timeout=1.0)
                raise HarnessError(
                    f"listeners in {ns} exited early (status {self._proc.returncode}):\n"
                    + "\n".join(self.output())
                )
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        stream = self._proc.stdout
        if stream is None:
            return
        with contextlib.suppress(ValueError, OSError):
            for raw in stream:
                line = raw.rstrip("\n")
                parts = line.split()
                with self._cond:
                    if line == "ready":
                        self._ready = True
                    elif len(parts) == 3 and parts[0] in ("tcp", "udp") and parts[1].isdigit():
                        if len(self._events) < _MAX_EVENTS:
                            proto: Literal["tcp", "udp"] = "tcp" if parts[0] == "tcp" else "udp"
                            self._events.append(ListenerEvent(proto, int(parts[1]), parts[2]))
                    elif len(self._output) < _MAX_EVENTS:
                        self._output.append(line)
                    self._cond.notify_all()

    @property
    def pid(self) -> int:
        """Pid of the listener process."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the listener process is still running."""
        return self._proc.poll() is None

    def events(self) -> list[ListenerEvent]:
        """Snapshot of the connections/datagrams seen so far."""
        with self._cond:
            return list(self._events)

    def peers(self, proto: Literal["tcp", "udp"], port: int | None = None) -> list[str]:
        """Source addresses seen for ``proto`` (and ``port`` if given), in arrival order."""
        return [
            e.peer for e in self.events() if e.proto == proto and (port is None or e.port == port)
        ]

    def wait_for_peer(
        self, proto: Literal["tcp", "udp"], port: int, peer: str, timeout: float = 2.0
    ) -> bool:
        """Wait (bounded) until a ``proto``/``port`` event from ``peer`` was recorded.

        Events are reported asynchronously, so a probe that returned ``"ok"`` may be recorded
        a moment later.  Returns false if none arrived within ``timeout``.
        """
        want = str(ipaddress.ip_address(peer))
        try:
            wait_until(
                lambda: want in self.peers(proto, port),
                timeout,
                what=f"{proto}/{port} from {peer}",
            )
        except HarnessTimeout:
            return False
        return True

    def output(self) -> list[str]:
        """Lines the listener printed that are not events (errors, tracebacks)."""
        with self._cond:
            return list(self._output)

    def stop(self) -> None:
        """Stop the listener process (EOF on stdin, then SIGTERM/SIGKILL). Idempotent."""
        if self._proc.poll() is None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
        _terminate(self._proc)
        self._reader.join(timeout=2.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------


@dataclass
class Client:
    """One client namespace and its veth link to the server namespace."""

    index: int
    ns: str
    ifname: str
    """Client end of the veth pair (inside ``ns``)."""
    server_ifname: str
    """Server end of the veth pair (inside the server namespace)."""
    v4: str
    v6: str
    server_v4: str
    server_v6: str
    extra_addresses: list[str] = field(default_factory=list)
    """Addresses added with :meth:`Topology.add_client_address`."""


class Topology:
    """A server namespace with ``clients`` client namespaces, each on its own veth link.

    Client ``i`` (0-based) is on link ``i + 1``: it has ``10.77.<i+1>.2/24`` and
    ``fd77:0:0:<i+1>::2/64``, the server's end has ``.1`` / ``::1``.  ``lo`` is up everywhere,
    IPv6 addresses are usable at once (``nodad``).  Nothing routes between links and no
    namespace has a default route.  On exit (also when the body raised) listeners and
    background processes are stopped and every namespace is deleted.
    """

    def __init__(self, clients: int = 1) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise HarnessError(f"clients must be in [1, {MAX_CLIENTS}]: {clients}")
        self.client_count = clients
        self.server: str = ""
        """Name of the server namespace (set on ``__enter__``)."""
        self.clients: list[Client] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._listeners: list[Listeners] = []
        self._entered = False
        self._closed = False

    @property
    def namespaces(self) -> list[str]:
        """All namespaces of this topology, server first."""
        return list(self._namespaces)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._entered:
            raise HarnessError("a Topology can be entered only once")
        self._entered = True
        try:
            self._build()
        except BaseException as exc:
            try:
                self.close()
            except HarnessError as cleanup_exc:
                exc.add_note(f"topology cleanup also failed: {cleanup_exc}")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except HarnessError as cleanup_exc:
            if exc is None:
                raise
            exc.add_note(f"topology cleanup also failed: {cleanup_exc}")

    def close(self) -> None:
        """Stop listeners and background processes, delete all namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for listeners in reversed(self._listeners):
            try:
                listeners.stop()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"stopping listeners: {exc}")
        for proc in reversed(self._procs):
            try:
                _terminate(proc)
            except Exception as exc:
                errors.append(f"stopping pid {proc.pid}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                delete_namespace(ns)
            except HarnessError as exc:
                errors.append(f"deleting {ns}: {exc}")
        if errors:
            raise HarnessError("topology cleanup failed:\n" + "\n".join(errors))

    def _build(self) -> None:
        tag = os.getpid() % 10000
        self.server = create_namespace()
        self._namespaces.append(self.server)
        for i in range(self.client_count):
            ns = create_namespace()
            self._namespaces.append(ns)
            link = i + 1
            self.clients.append(
                Client(
                    index=i,
                    ns=ns,
                    ifname=f"afc{tag}-{i}",
                    server_ifname=f"afs{tag}-{i}",
                    v4=f"10.77.{link}.2",
                    v6=f"fd77:0:0:{link:x}::2",
                    server_v4=f"10.77.{link}.1",
                    server_v6=f"fd77:0:0:{link:x}::1",
                )
            )
        for ns in self._namespaces:
            _set_sysctls(ns, _NETNS_SYSCTLS)

        server_cmds = ["link set dev lo up"]
        for c in self.clients:
            server_cmds += [
                f"link add {c.server_ifname} type veth peer name {c.ifname} netns {c.ns}",
                f"addr add {c.server_v4}/24 dev {c.server_ifname}",
                f"addr add {c.server_v6}/64 dev {c.server_ifname} nodad",
                f"link set dev {c.server_ifname} up",
            ]
        self._ip_batch(self.server, server_cmds)
        for c in self.clients:
            self._ip_batch(
                c.ns,
                [
                    "link set dev lo up",
                    f"addr add {c.v4}/24 dev {c.ifname}",
                    f"addr add {c.v6}/64 dev {c.ifname} nodad",
                    f"link set dev {c.ifname} up",
                ],
            )

        pending: dict[str, dict[str, set[str]]] = {
            self.server: {c.server_ifname: {c.server_v4, c.server_v6} for c in self.clients}
        }
        for c in self.clients:
            pending[c.ns] = {c.ifname: {c.v4, c.v6}}
        self._wait_settled(pending)

    @staticmethod
    def _ip_batch(ns: str, commands: Sequence[str]) -> None:
        _run(["ip", "-n", ns, "-batch", "-"], stdin_text="\n".join(commands) + "\n")

    @staticmethod
    def _settled(ns: str, expected: dict[str, set[str]]) -> bool:
        """True when every expected interface is UP and carries its addresses, none of them
        tentative."""
        proc = _run(["ip", "-n", ns, "-j", "addr", "show"], check=False)
        if proc.returncode != 0:
            return False
        try:
            links = json.loads(proc.stdout)
        except json.JSONDecodeError:
            return False
        usable: dict[str, set[str]] = {}
        for link in links:
            if link.get("operstate") != "UP":
                continue
            usable[link.get("ifname", "")] = {
                str(ipaddress.ip_address(a["local"]))
                for a in link.get("addr_info", [])
                if "local" in a and not a.get("tentative") and not a.get("dadfailed")
            }
        return all(addrs <= usable.get(ifname, set()) for ifname, addrs in expected.items())

    def _wait_settled(self, pending: dict[str, dict[str, set[str]]]) -> None:
        todo = dict(pending)

        def check() -> bool:
            for ns in list(todo):
                if self._settled(ns, todo[ns]):
                    del todo[ns]
            return not todo

        wait_until(
            check, SETTLE_TIMEOUT, interval=0.02, what="links up and IPv6 addresses non-tentative"
        )

    # -- helpers for tests -------------------------------------------------------------------

    def _require_member(self, ns: str) -> None:
        if self._closed or ns not in self._namespaces:
            raise HarnessError(f"{ns!r} is not a namespace of this (open) topology")

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = CMD_TIMEOUT,
        check: bool = False,
        stdin_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in namespace ``ns`` of this topology; see :func:`ns_exec`."""
        self._require_member(ns)
        return ns_exec(ns, argv, timeout=timeout, check=check, stdin_text=stdin_text)

    def popen(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start a background process in ``ns``; it is killed when the topology closes."""
        self._require_member(ns)
        proc = ns_popen(ns, argv, stdin=stdin, stdout=stdout, stderr=stderr)
        self._procs.append(proc)
        return proc

    def start_listeners(
        self,
        tcp_ports: Sequence[int] = (),
        udp_ports: Sequence[int] = (),
        *,
        ns: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> Listeners:
        """Start :class:`Listeners` in the server namespace (or ``ns``) and wait until all
        sockets are bound.  They are stopped when the topology closes."""
        target = self.server if ns is None else ns
        self._require_member(target)
        listeners = Listeners(target, tcp_ports, udp_ports, ready_timeout=ready_timeout)
        self._listeners.append(listeners)
        return listeners

    def add_client_address(self, index: int, cidr: str) -> str:
        """Add another address (``"10.77.1.50/24"``, ``"fd77:0:0:1::50/64"``) to client
        ``index``'s link, so that one client namespace can act as several sources.

        If the address is outside the client's link subnet, a host route to it is added in
        the server namespace so replies find their way back.  Waits until the address is
        usable and returns it without prefix length (pass it as ``source=`` to a probe).
        """
        client = self.clients[index]
        self._require_member(client.ns)
        try:
            iface = ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise HarnessError(f"not an address/prefix: {cidr!r}") from exc
        address = str(_ip_of(str(iface.ip)))
        argv = ["ip", "-n", client.ns, "addr", "add", str(iface), "dev", client.ifname]
        _run([*argv, "nodad"] if iface.version == 6 else argv)
        link_net = ipaddress.ip_interface(
            f"{client.server_v4}/24" if iface.version == 4 else f"{client.server_v6}/64"
        ).network
        if iface.ip not in link_net:
            host = f"{address}/{iface.max_prefixlen}"
            _run(["ip", "-n", self.server, "route", "replace", host, "dev", client.server_ifname])
        self._wait_settled({client.ns: {client.ifname: {address}}})
        client.extra_addresses.append(address)
        return address


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.netns``: delete harness namespaces left behind by dead processes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--cleanup-stale"]):
        print("usage: python -m tests.netns [--cleanup-stale]", file=sys.stderr)
        return 2
    for name in cleanup_all(stale=True):
        print(f"removed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
