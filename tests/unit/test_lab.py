"""The lab toolkit's pieces that need no privilege: `until`, the stale-namespace sweep,
and that the toolkit is never shipped in the package."""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest

from lab import ROOT, netns
from lab.wait import until


def test_until_returns_as_soon_as_the_predicate_holds() -> None:
    calls = iter([False, False, True])
    until(lambda: next(calls), 5, "the third call")


def test_until_names_what_it_waited_for_when_time_runs_out() -> None:
    with pytest.raises(TimeoutError, match=r"not within 0\.1s: the impossible"):
        until(lambda: False, 0.1, "the impossible", interval=0.01)


def test_sweep_deletes_only_namespaces_of_dead_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = 2**22 + 7  # above pid_max's default: no such process
    listing = (
        f"afw-{dead}-0 (id: 3)\nafw-{os.getpid()}-1 (id: 4)\nafwb-{dead}-2\nother-{dead}-3\n"
        f"afw-{dead}-a4\n"
    )
    deleted: list[str] = []

    def fake_run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if argv[:3] == ["ip", "netns", "delete"]:
            deleted.append(argv[3])
        return subprocess.CompletedProcess(argv, 0, listing, "")

    monkeypatch.setattr(netns, "run", fake_run)
    assert netns.sweep() == [f"afw-{dead}-0", f"afw-{dead}-a4"]
    assert deleted == [f"afw-{dead}-0", f"afw-{dead}-a4"]
    assert netns.listing("afwb") == [f"afwb-{dead}-2"]


def test_lab_toolkit_is_not_part_of_the_installed_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["aitherfwd*"]
    assert "lab" in pyproject["tool"]["mypy"]["packages"]
