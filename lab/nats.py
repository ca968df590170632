"""A real nats-server with JetStream for the fleet's tests, benchmarks and demo.

Owns: starting `nats-server -js` inside a namespace (alone, or as a node of a cluster
whose routes its config gives) with its storage in a directory the caller gives (so a
restart keeps the streams and durable consumers), waiting — with a deadline — until it is
ready, stopping it (to make a partition) and starting it again, and killing it always,
even when the caller fails (`with NatsServer(...) as bus:`); `fleet_accounts`, the
per-host permissions docs/fleet.md shows.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from lab import netns
from lab.wait import until

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


class NatsServer:
    def __init__(
        self, ns: str, workdir: Path, port: int = 4222, config: str = "", name: str = "afw"
    ) -> None:
        """`name` must differ between the nodes of a cluster (`config` has its routes)."""
        self.ns, self.port, self.name = ns, port, name
        workdir.mkdir(parents=True, exist_ok=True)
        self.store = workdir / "jetstream"
        self.log = workdir / "nats.log"
        self.config = workdir / "nats.conf"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(signal.SIGKILL)

    def start(self, deadline_s: float = 15.0) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        mark = self.log.read_text().count("Server is ready") if self.log.exists() else 0
        argv = [NATS_SERVER, "-js", "-sd", str(self.store), "-p", str(self.port), "-n", self.name]
        argv += ["-c", str(self.config)] if self.config.read_text() else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                netns.exec_argv(self.ns, argv), stdout=log, stderr=subprocess.STDOUT
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            return self.log.read_text().count("Server is ready") > mark

        until(ready, deadline_s, "nats-server to be ready")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def fleet_accounts(fleet: str, hosts: dict[str, str], admins: tuple[str, ...] = ()) -> str:
    """A nats-server config block (docs/fleet.md shows it) for one fleet: an account with
    JetStream, one user per host (name -> password) that may publish decisions and events
    only under its own name, use its own durable consumers, and read the policy bucket;
    hosts in `admins` may also push the policy. Everything else is refused by the server."""
    d, t, kv = f"AFW_{fleet}_DECISIONS", f"AFW_{fleet}_THREATS", f"AFW_{fleet}_POLICY"
    users = []
    for host, password in hosts.items():
        allow = [
            f"afw.{fleet}.d.{host}.>",
            f"afw.{fleet}.t.{host}",
            "$JS.API.INFO",
            *(f"$JS.API.STREAM.{op}.{s}" for op in ("INFO", "CREATE") for s in (d, t, f"KV_{kv}")),
            f"$JS.API.CONSUMER.*.{d}.{host}",
            f"$JS.API.CONSUMER.*.{d}.{host}.>",
            f"$JS.API.CONSUMER.*.{t}.{host}-t",
            f"$JS.API.CONSUMER.*.{t}.{host}-t.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{d}.{host}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{t}.{host}-t",
            f"$JS.API.CONSUMER.MSG.NEXT.{d}.{host}",
            f"$JS.API.CONSUMER.MSG.NEXT.{t}.{host}-t",
            f"$JS.ACK.{d}.{host}.>",
            f"$JS.ACK.{t}.{host}-t.>",
            f"$JS.API.DIRECT.GET.KV_{kv}.>",
            f"$JS.API.STREAM.MSG.GET.KV_{kv}",
            *([f"$KV.{kv}.policy"] if host in admins else []),
        ]
        quoted = ", ".join(f'"{a}"' for a in allow)
        users.append(
            f'      {{user: "{host}", password: "{password}", permissions: {{\n'
            f"        publish: {{allow: [{quoted}]}}\n"
            f'        subscribe: {{allow: ["_INBOX.>"]}}\n'
            f"      }}}}"
        )
    return (
        "accounts {\n"
        f"  {fleet.upper()}: {{\n"
        "    jetstream: enabled\n"
        "    users: [\n" + ",\n".join(users) + "\n    ]\n"
        "  }\n"
        "}\n"
    )
