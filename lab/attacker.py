"""Hostile clients of the control socket, for the soak test (not shipped).

Standard library only, so it runs as any uid under the system python
(`setpriv --reuid=N … /usr/bin/python3 -I -S lab/attacker.py MODE SOCKET SECONDS`): the
project's venv may live where other users cannot read. Every mode is bounded in time and
in count, and prints one JSON line of counters at the end.

Modes: `idle` (hold up to 600 idle connections, reopening what the daemon closes),
`bigbody` (declare 30 MB bodies and trickle them), `junk` (random bytes), `forbidden`
(requests the uid's role does not allow), `grants` (sandbox grants of random addresses),
`threats` (threat events from random sources and types).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time

MAX_REQUESTS = 200_000


def connect(path: str, timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def exchange(path: str, method: str, target: str, body: object | None = None) -> int:
    """One request on its own connection; the status, or 0 when the daemon did not answer."""
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    try:
        with connect(path) as s:
            s.sendall(head + data)
            answer = s.recv(4096)
    except OSError:
        return 0
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def idle(path: str, end: float, counts: dict[str, int]) -> None:
    held: list[socket.socket] = []
    while time.monotonic() < end:
        alive = []
        for s in held:
            try:
                s.setblocking(False)
                if s.recv(1) == b"":
                    s.close()
                    counts["closed_by_daemon"] += 1
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                counts["closed_by_daemon"] += 1
                continue
            alive.append(s)
        held = alive
        while len(held) < 600 and time.monotonic() < end:
            try:
                held.append(connect(path, 0.5))
                counts["opened"] += 1
            except OSError:
                counts["refused"] += 1
                break
        time.sleep(0.2)
    for s in held:
        s.close()


def bigbody(path: str, end: float, counts: dict[str, int]) -> None:
    conns: list[socket.socket] = []
    while time.monotonic() < end:
        while len(conns) < 16:
            try:
                s = connect(path, 0.5)
                s.sendall(
                    b"POST /v1/blocks HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 31457280\r\n\r\n["
                )
                conns.append(s)
                counts["opened"] += 1
            except OSError:
                counts["refused"] += 1
                break
        for s in list(conns):
            try:
                s.sendall(b'{"address": "192.0.2.1"},' * 40)
                counts["sent_kb"] += 1
            except OSError:
                conns.remove(s)
                s.close()
                counts["closed_by_daemon"] += 1
        time.sleep(0.1)
    for s in conns:
        s.close()


def junk(path: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end and counts["sent"] < MAX_REQUESTS:
        try:
            with connect(path, 1.0) as s:
                s.sendall(os.urandom(random.randint(1, 4096)))
                s.shutdown(socket.SHUT_WR)
                s.recv(4096)
        except OSError:
            counts["errors"] += 1
        counts["sent"] += 1


def _address() -> str:
    if random.random() < 0.7:
        return f"198.18.{random.randint(0, 255)}.{random.randint(1, 254)}"
    return f"2001:db8:{random.randint(0, 0xFFFF):x}::{random.randint(1, 0xFFFF):x}"


def forbidden(path: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end and counts["sent"] < MAX_REQUESTS:
        status = exchange(path, "POST", "/v1/blocks", {"address": _address(), "reason": "x" * 400})
        counts[f"status_{status}"] += 1
        counts["sent"] += 1


def grants(path: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end and counts["sent"] < MAX_REQUESTS:
        body = {"destination": _address(), "ttl": "60s", "scope": "sandbox-soak"}
        counts[f"status_{exchange(path, 'POST', '/v1/sandbox', body)}"] += 1
        counts["sent"] += 1


def threats(path: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end and counts["sent"] < MAX_REQUESTS:
        events = [
            {
                "type": f"SOAK_{random.randint(0, 5000)}",
                "source_ip": _address(),
                "severity": random.choice(["low", "medium", "high"]),
            }
            for _ in range(100)
        ]
        counts[f"status_{exchange(path, 'POST', '/v1/threats', {'events': events})}"] += 1
        counts["sent"] += 1


MODES = {
    "idle": idle,
    "bigbody": bigbody,
    "junk": junk,
    "forbidden": forbidden,
    "grants": grants,
    "threats": threats,
}


class Counts(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0


def main() -> int:
    mode, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    counts = Counts()
    MODES[mode](path, time.monotonic() + seconds, counts)
    print(json.dumps({"mode": mode, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
