"""systemd integration: sd_notify, the watchdog and journald (layer L2).

Owns: READY/RELOADING/STOPPING/STATUS/WATCHDOG notifications through systemd-python,
the watchdog interval from WATCHDOG_USEC, and a journald log handler when the daemon's
output goes to the journal. Everything is a no-op outside systemd.
"""

from __future__ import annotations

import logging
import os
import time


def _notify(message: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        import systemd.daemon as sd_daemon  # noqa: PLC0415
    except ImportError:
        return
    sd_daemon.notify(message)


def ready(status: str) -> None:
    _notify(f"READY=1\nSTATUS={status}")


def reloading() -> None:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    _notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def status(text: str) -> None:
    _notify(f"STATUS={text}")


def stopping() -> None:
    _notify("STOPPING=1")


def watchdog() -> None:
    _notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2_000_000)
    except ValueError:
        return None


class SystemdNotify:
    """The daemon's systemd port (daemon/ports.py) over the functions above."""

    def ready(self, status: str) -> None:
        ready(status)

    def reloading(self) -> None:
        reloading()

    def status(self, text: str) -> None:
        status(text)

    def stopping(self) -> None:
        stopping()

    def watchdog(self) -> None:
        watchdog()


def journal_handler() -> logging.Handler | None:
    """A journald handler with priorities when stderr is connected to the journal."""
    if not os.environ.get("JOURNAL_STREAM"):
        return None
    try:
        from systemd.journal import JournalHandler  # noqa: PLC0415
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="aitherfwd")
    return handler
