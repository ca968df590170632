"""Legitimate traffic for the false-positive suite (tests/kernel/test_false_positives.py),
run inside a lab namespace as `python fptraffic.py MODE ADDR SECONDS [ARGS]`; prints one JSON
summary line {"ok": n, "failed": n, "errors": {...}} at the end. Also `server PORTS`: the
keep-alive echo server those clients talk to (one reply line per request line).

Every mode is bounded in time (SECONDS) and in threads (MAX_THREADS). Stdlib only.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import sys
import threading
import time
from collections import Counter

MAX_THREADS = 400
TIMEOUT = 20.0  # one connection attempt including SYN retries on a lossy link
lock = threading.Lock()
result: Counter[str] = Counter()
slots = threading.BoundedSemaphore(MAX_THREADS)


def note(what: str) -> None:
    with lock:
        result[what] += 1


def connect(addr: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
    except BaseException:
        s.close()
        raise
    return s


def request(s: socket.socket) -> None:
    s.sendall(b"GET\n")
    if not s.recv(16).startswith(b"ok"):
        raise ConnectionError("no reply")


def attempt(addr: str, port: int, requests: int = 1, hold: float = 0.0) -> None:
    """One short connection: connect, a few requests, close (no keep-alive)."""
    try:
        with connect(addr, port) as s:
            for _ in range(requests):
                request(s)
            if hold:
                time.sleep(hold)
        note("ok")
    except OSError as exc:
        note(type(exc).__name__)
    finally:
        slots.release()


def spawn(target: object, *args: object) -> threading.Thread | None:
    if not slots.acquire(timeout=TIMEOUT):
        note("no-thread")
        return None
    t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    t.start()
    return t


def paced(addr: str, secs: float, rate: float, ports: list[int]) -> list[threading.Thread]:
    """`rate` new short connections per second for `secs` seconds, on schedule."""
    threads = []
    start = time.monotonic()
    for i in range(int(secs * rate)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = spawn(attempt, addr, random.choice(ports))
        if t is not None:
            threads.append(t)
    return threads


def keepalive(addr: str, port: int, until: float, every: float, start: threading.Event) -> None:
    """One keep-alive connection: a request every `every` seconds until `until`."""
    try:
        start.wait()
        with connect(addr, port) as s:
            note("opened")
            while time.monotonic() < until:
                request(s)
                note("request")
                time.sleep(every * random.uniform(0.5, 1.5))
        note("ok")
    except OSError as exc:
        note(type(exc).__name__)
    finally:
        slots.release()


def pool(addr: str, secs: float, n: int, every: float = 1.0) -> list[threading.Thread]:
    """`n` keep-alive connections opened at the same moment, used until the end."""
    go = threading.Event()
    until = time.monotonic() + secs
    threads = [spawn(keepalive, addr, 443, until, every, go) for _ in range(n)]
    go.set()
    return [t for t in threads if t is not None]


def browser(addr: str, secs: float, burst: int = 30, every: float = 10.0) -> list[threading.Thread]:
    """Page loads: `burst` parallel connections, each a few requests, held open 2 s."""
    threads = []
    start = time.monotonic()
    while time.monotonic() - start < secs - 3:
        threads += [spawn(attempt, addr, 443, 3, 2.0) for _ in range(burst)]
        time.sleep(every)
    return [t for t in threads if t is not None]


def nat(addr: str, secs: float, users: int, rate: float) -> list[threading.Thread]:
    """A NAT gateway: `users` keep-alive sessions (a request every few seconds) plus `rate`
    short connections per second to the web and internal services, all from one address."""
    go = threading.Event()
    until = time.monotonic() + secs
    threads = [
        spawn(keepalive, addr, random.choice([443, 8000]), until, 3.0, go) for _ in range(users)
    ]
    go.set()
    return [t for t in threads if t is not None] + paced(addr, secs, rate, [443, 80, 8000, 8042])


def server(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data is None:
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                elif sock.recv(4096):
                    sock.send(b"ok\n")
                else:
                    sel.unregister(sock)
                    sock.close()
            except OSError:
                if key.data is not None:
                    sel.unregister(sock)
                    sock.close()


def main() -> None:
    mode = sys.argv[1]
    if mode == "server":
        server([int(p) for p in sys.argv[2].split(",")])
        return
    addr, secs = sys.argv[2], float(sys.argv[3])
    args = [float(a) for a in sys.argv[4:]]
    started = time.monotonic()
    if mode == "short":
        threads = paced(addr, secs, args[0], [443])
    elif mode == "pool":
        threads = pool(addr, secs, int(args[0]))
    elif mode == "browser":
        threads = browser(addr, secs)
    elif mode == "nat":
        threads = nat(addr, secs, int(args[0]), args[1])
    else:
        raise SystemExit(f"unknown mode {mode}")
    # one deadline for all: a keep-alive thread runs `secs`, so joining each for a fixed
    # time gave up on the first ones early, and one still finishing was missing from the
    # summary (a flake: 199 of 200 "ok", no error)
    deadline = started + secs + TIMEOUT + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    print(json.dumps(dict(result)), flush=True)


if __name__ == "__main__":
    main()
