"""A booted Debian bookworm with the built .deb installed: a systemd-nspawn container.

Owns: the cached debootstrap root (under /var/cache/aitherfwd-test, keyed by a hash of
suite, mirror, variant and package list), a throwaway overlay on top of it per run,
installing the .deb with apt inside it (its dependencies resolved by apt from Debian, so a
missing Depends fails here), booting it with `systemd-nspawn -b --register=no --keep-unit`
in a lab network namespace with CAP_NET_ADMIN, running commands in it with
`nsenter -t <container PID 1> -a`, and removing all of it (container, overlay, directories),
also on failure. Nothing here acts on the host's own firewall: the package's maintainer
scripts run in a container with a private network, the booted system in the lab namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# Only what a booted systemd needs: everything aitherfwd needs comes from its Depends.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
CACHE = Path(os.environ.get("AITHERFWD_TEST_CACHE", "/var/cache/aitherfwd-test"))
PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
# in the environment of every container's init: how remove_leftovers() finds a dead run's
MARKER = "AITHERFWD_TEST_CONTAINER"


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def must(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = run(argv, timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (exit {res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def base_root() -> Path:
    """The cached minimal root; built once (~60 s) and reused while the key holds."""
    spec = json.dumps([SUITE, MIRROR, VARIANT, sorted(BASE_PACKAGES)])
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    root = CACHE / f"rootfs-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs wait for one debootstrap
        if root.is_dir():
            return root
        for old in CACHE.glob("rootfs-*"):  # other keys and interrupted builds
            shutil.rmtree(old, ignore_errors=True)
        partial = CACHE / f"rootfs-{key}.partial"
        must(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(partial),
                MIRROR,
            ],
            timeout=900,
        )
        partial.rename(root)  # atomic: a root dir under its final name is complete
    return root


def _is_namespace_init(status: str) -> bool:
    """From /proc/PID/status: pid 1 of a PID namespace below ours (NSpid: <ours> ... 1)."""
    found = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
    ns_pids = found.group(1).split() if found else []
    return len(ns_pids) > 1 and ns_pids[-1] == "1"


def _container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 as the host sees it: a child of nspawn whose innermost pid is 1."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{child}/status").read_text()
            if _is_namespace_init(status):
                return int(child)
    return None


class Container:
    """`with Container(netns, deb) as ct:` — booted, with the package installed."""

    def __init__(self, netns: str, deb: Path) -> None:
        self.netns, self.deb = netns, deb.resolve()
        self.machine = f"afw-{os.getpid()}-sd"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.machine}-"))
        self.root = self.tmp / "root"
        self.console = self.tmp / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self._pid1_started: str | None = None
        self._mounted = False

    def __enter__(self) -> Container:
        try:
            self._overlay(base_root())
            self._install()
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- setting up -----------------------------------------------------------------------

    def _overlay(self, lower: Path) -> None:
        upper, work = self.tmp / "upper", self.tmp / "work"
        for d in (upper, work, self.root):
            d.mkdir()
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        must(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)])
        self._mounted = True

    def _nspawn_once(self, *argv: str, network: bool, timeout: float = 600) -> None:
        """A command in the (not booted) root; `network=False` gives it a private network."""
        archives = CACHE / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        must(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                f"--machine={self.machine}",
                f"--directory={self.root}",
                f"--setenv={MARKER}={self.machine}",
                *([] if network else ["--private-network"]),
                f"--bind-ro={self.deb}:/run/{self.deb.name}",
                f"--bind={archives}:/var/cache/apt/archives",  # downloads kept between runs
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                *argv,
            ],
            timeout=timeout,
        )

    def _install(self) -> None:
        """apt resolves the .deb's dependencies from Debian; only the download sees a
        network, the maintainer scripts run with a private one."""
        apt = ["apt-get", "-q", "-y", "--no-install-recommends", "install"]
        deb = f"/run/{self.deb.name}"
        try:
            self._nspawn_once(*apt, "--download-only", deb, network=True)
        except RuntimeError:  # the cached package lists went stale: refresh them once
            self._nspawn_once("apt-get", "-q", "update", network=True)
            self._nspawn_once(*apt, "--download-only", deb, network=True)
        self._nspawn_once(*apt, deb, network=False)  # everything is in the archive cache

    def _boot(self) -> None:
        argv = [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--machine={self.machine}",
            f"--directory={self.root}",
            f"--setenv={MARKER}={self.machine}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--capability=CAP_NET_ADMIN",
            "--console=read-only",
        ]
        with self.console.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        end = time.monotonic() + 30
        while time.monotonic() < end and self.proc.poll() is None:
            pid1 = _container_init(self.proc.pid)
            if pid1:
                self.pid1, self._pid1_started = pid1, _start_time(pid1)
                break
            time.sleep(0.05)
        if not self.pid1:
            raise RuntimeError(f"the container did not start:\n{self.console_tail()}")
        # "offline" until the container's systemd listens; then --wait blocks until booted
        end, state = time.monotonic() + 90, ""
        while time.monotonic() < end and self.proc.poll() is None:
            state = self.sh("systemctl", "is-system-running", "--wait", timeout=90).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the container did not boot ({state}):\n{self.console_tail()}")

    # -- using it -------------------------------------------------------------------------

    def sh(
        self, *argv: str, user: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the booted container (all its namespaces), as root or `user`."""
        inner = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        return run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", PATH, "LANG=C.UTF-8", *inner],
            timeout,
        )

    def ok(self, *argv: str, user: str | None = None, timeout: float = 60) -> str:
        res = self.sh(*argv, user=user, timeout=timeout)
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} (exit {res.returncode}): {res.stderr}")
        return res.stdout

    def prop(self, name: str, unit: str = "aitherfwd.service") -> str:
        return self.ok("systemctl", "show", "-p", name, "--value", unit).strip()

    def write(self, path: str, text: str) -> None:
        """Replace a file the way editors do (write aside, rename over)."""
        target = self.root / path.lstrip("/")
        aside = target.with_name(f".{target.name}.new")
        aside.write_text(text)
        aside.rename(target)

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_bytes().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- tearing down ---------------------------------------------------------------------

    def close(self) -> None:
        # SIGKILL to the container's init ends its whole PID namespace at once (a throwaway
        # system needs no clean shutdown); nspawn then exits by itself. Killing only nspawn
        # would leave the container running, reparented to the host's init.
        _kill_init(self.pid1, self._pid1_started)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._mounted:
            if run(["umount", str(self.root)]).returncode != 0:
                run(["umount", "--lazy", str(self.root)])
            self._mounted = False
        shutil.rmtree(self.tmp, ignore_errors=True)
        # nspawn leaves this behind when /run is not a tmpfs (it refuses to rm -rf there)
        with contextlib.suppress(OSError):
            Path(f"/run/systemd/nspawn/propagate/{self.machine}").rmdir()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name may contain spaces


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_init(pid: int, started: str | None) -> None:
    """SIGKILL a container's init if it is still that process; wait until it is gone."""
    if not pid or started is None or _start_time(pid) != started:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 15
    while time.monotonic() < end and _start_time(pid) == started:
        time.sleep(0.05)


def _inits_of(machine: str) -> list[int]:
    """Container inits (innermost pid 1) started with our marker for `machine`."""
    marker = f"{MARKER}={machine}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            status = (proc / "status").read_text()
            if _is_namespace_init(status):
                found.append(int(proc.name))
    return found


def remove_leftovers() -> None:
    """Containers and overlays of test processes that died without cleaning up: their
    containers' inits (found by MARKER; killing one ends its PID namespace), their nspawn
    processes, the overlay mount and the directories."""
    for tmp in Path(tempfile.gettempdir()).glob("afw-*-sd-*"):
        match = re.match(r"afw-(\d+)-sd-", tmp.name)
        if not match or _alive(int(match.group(1))):
            continue
        machine = f"afw-{match.group(1)}-sd"
        for pid in _inits_of(machine):
            _kill_init(pid, _start_time(pid))
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if b"systemd-nspawn" in cmdline[0] and f"--machine={machine}".encode() in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
        root = tmp / "root"
        if run(["mountpoint", "-q", str(root)]).returncode == 0:
            run(["umount", "--lazy", str(root)])
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(f"/run/systemd/nspawn/propagate/{machine}").rmdir()
