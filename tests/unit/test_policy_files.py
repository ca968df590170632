"""Hostile policy files (issue 14, items 4 and 10): nesting that would crash libyaml's C
composer or Python's recursion, and files that are not regular files or are too large.
Each deep file is the real thing (200 KB, or 2,000 levels); `aitherfwd check` runs in a
child process, so a crash is a failed test, not a dead test run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aitherfwd.adapters import files
from aitherfwd.adapters.files import load_policy, read_text
from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.source import MAX_DEPTH, parse_yaml

HEADER = "version: 1\nrules:\n"


def _flow(levels: int) -> str:
    return HEADER + "  - " + "[" * levels + "]" * levels + "\n"


def _flow_unclosed(levels: int) -> str:
    return "[" * levels


def _block_sequences(levels: int) -> str:
    return HEADER + "  " + "- " * levels + "x\n"


def _block_mappings(levels: int) -> str:
    nested = "".join(" " * (i + 1) + f"k{i}:\n" for i in range(levels))
    return HEADER + nested + " " * levels + " v\n"


DEEP = {
    "flow-100000-unclosed": _flow_unclosed(100_000) * 2,  # 200 KB of `[`
    "flow-100000": _flow(100_000),
    "flow-2000": _flow(2000),
    "block-sequences-2000": _block_sequences(2000),
    "block-mappings-2000": _block_mappings(2000),
    "flow-mappings-2000": HEADER + "  - " + "{a: " * 2000 + "x" + "}" * 2000 + "\n",
}


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aitherfwd", "check", "--no-resolve", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("shape", sorted(DEEP))
def test_check_of_deeply_nested_yaml_is_a_located_error_not_a_crash(
    tmp_path: Path, shape: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DEEP[shape])
    done = _check(path)
    assert done.returncode == 3, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert f"{path}:" in done.stdout
    assert "error[E-YAML]" in done.stdout
    assert f"deeper than {MAX_DEPTH}" in done.stdout


def test_nesting_at_the_limit_is_accepted_and_one_more_is_not() -> None:
    ok = parse_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, "p.yaml", report := Reporter())
    assert ok is not None and not report.errors
    deep = parse_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "p.yaml", report := Reporter())
    assert deep is None
    (err,) = report.errors
    assert (err.code, err.pos.line, err.pos.col) == ("E-YAML", 1, MAX_DEPTH + 1)


def test_brackets_inside_strings_and_comments_do_not_count_as_nesting() -> None:
    text = (
        HEADER
        + "  - name: x  # "
        + "[" * 500
        + "\n    description: '"
        + "{" * 500
        + "'\n    action: allow\n"
    )
    report = Reporter()
    assert parse_yaml(text, "p.yaml", report) is not None
    assert not report.errors


def test_recursion_error_while_composing_is_a_located_yaml_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aitherfwd.policy import source  # noqa: PLC0415

    monkeypatch.setattr(source, "MAX_DEPTH", 100_000)  # the pre-scan lets it through
    report = Reporter()
    assert parse_yaml(_block_sequences(2000), "p.yaml", report) is None
    assert [e.code for e in report.errors] == ["E-YAML"]


def test_text_over_the_size_limit_is_refused_before_parsing() -> None:
    report = Reporter()
    text = "#" * (files.MAX_POLICY_BYTES + 1)
    assert parse_yaml(text, "p.yaml", report) is None
    assert [e.code for e in report.errors] == ["E-YAML"]


# --- item 10: only regular files, bounded ----------------------------------------------------


def test_a_fifo_at_the_policy_path_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = load_policy(fifo)
    assert time.monotonic() - started < 1
    assert result.policy is None
    (diag,) = result.diagnostics
    assert diag.code == "E-FILE"
    assert "not a regular file" in diag.message


def test_a_device_file_is_refused() -> None:
    with pytest.raises(OSError, match="not a regular file"):
        read_text(Path("/dev/zero"))


def test_a_huge_sparse_file_is_refused_from_its_size_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    with path.open("wb") as fh:
        fh.truncate(768 << 20)
    read = threading.Event()
    real_read = os.read

    def spy(fd: int, n: int) -> bytes:
        read.set()
        return real_read(fd, n)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files.os, "read", spy)
        with pytest.raises(OSError, match="larger than"):
            read_text(path)
    assert not read.is_set()


def test_a_file_growing_while_read_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:  # the size when it was opened: small
        st = list(real_fstat(fd))
        st[6] = 10  # st_size
        return os.stat_result(st)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(files.os, "fstat", stale_fstat)
        with pytest.raises(OSError, match="larger than 100 bytes"):
            read_text(path, limit=100)


def test_a_services_file_that_is_a_fifo_is_a_located_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "services.yaml")
    policy = tmp_path / "policy.yaml"
    policy.write_text(HEADER.replace("rules:\n", "services_file: services.yaml\n"))
    result = load_policy(policy)
    assert result.policy is None
    assert any("not a regular file" in d.message for d in result.diagnostics)


def test_a_config_that_is_a_fifo_or_too_large_is_a_config_error_at_once(tmp_path: Path) -> None:
    from aitherfwd.config import ConfigError  # noqa: PLC0415
    from aitherfwd.daemon.main import load_config  # noqa: PLC0415

    fifo, huge = tmp_path / "fifo.toml", tmp_path / "huge.toml"
    os.mkfifo(fifo)
    with huge.open("wb") as fh:
        fh.truncate(files.MAX_CONFIG_BYTES + 1)
    started = time.monotonic()
    for path, why in ((fifo, "not a regular file"), (huge, "larger than")):
        with pytest.raises(ConfigError, match=why) as info:
            load_config(path)
        assert "error[E-CONFIG-FILE]" in info.value.message
    assert time.monotonic() - started < 1
