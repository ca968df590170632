"""Shared fixtures: paths, and a guard that kernel tests run as root (CI does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from lab import ROOT

POLICIES = ROOT / "policies"

# Property-based tests stay within the unit suite's seconds: 50 examples by default (a test
# may ask for fewer), no per-example deadline (2 shared cores make timings noisy). In CI the
# examples are derandomized and no example database is written, so a run is reproducible.
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


CAP_DAC_OVERRIDE, CAP_NET_ADMIN = 1, 12


def _has_capability(bit: int) -> bool:
    """`bit` in this process's effective capability set."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _can_override_modes() -> bool:
    """File modes do not stop this process."""
    return _has_capability(CAP_DAC_OVERRIDE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kernel tests need root with its capabilities; a run without them (not root, or root
    with every capability dropped) marks them xfail-not-run rather than skipping (a
    skipped firewall test is a missing test). Tests of what file modes refuse
    (`unprivileged`) cannot hold for a process that overrides them: such a run deselects
    them, and `make test-unprivileged` (every capability dropped) runs them."""
    if _can_override_modes():
        keep = [i for i in items if not i.get_closest_marker("unprivileged")]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    if os.geteuid() == 0 and _has_capability(CAP_NET_ADMIN):
        return
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(
                pytest.mark.xfail(reason="needs root: run `sudo make test`", run=False, strict=True)
            )


SYSTEMD_TESTS = ROOT / "tests" / "systemd"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/systemd boots a container from the built .deb (minutes, not seconds): it runs
    with `make test-systemd` (and in CI), or when named on the command line."""
    if collection_path != SYSTEMD_TESTS:
        return None
    asked = [Path(str(a).split("::", 1)[0]).resolve() for a in config.args]
    return not any(a == SYSTEMD_TESTS or SYSTEMD_TESTS in a.parents for a in asked)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove lab namespaces left by test processes that died without cleaning up."""
    if os.geteuid() != 0:
        return
    from lab import netns  # noqa: PLC0415

    netns.sweep()
