"""The daemon config is checked like the policy: every problem at once, each located at its
key's line and column and coded, rendered `aitherfwd.toml:LINE:COL: error[CODE] key: …`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from aitherfwd.cli import main
from aitherfwd.config import ConfigError, DaemonConfig, parse_config
from aitherfwd.daemon.main import load_config

USERS = {"alice": 1000}
GROUPS = {"aitherfwd": 900}


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, USERS.__getitem__, GROUPS.__getitem__)
    assert info.value.code == "E-CONFIG"
    assert info.value.message.splitlines()[-1].endswith("0 warnings")
    return [d.render() for d in info.value.diagnostics]


def test_a_typo_in_max_body_bytes_is_a_located_type_error_not_a_traceback() -> None:
    assert _errors('[control]\nsocket = "/run/x.sock"\nmax_body_bytes = "1M"\n') == [
        "aitherfwd.toml:3:1: error[E-CONFIG-TYPE] control.max_body_bytes: "
        "must be an integer, got a string"
    ]


def test_a_zero_drift_check_interval_is_out_of_range() -> None:
    assert _errors("[daemon]\n  drift_check_interval = 0\n") == [
        "aitherfwd.toml:2:3: error[E-CONFIG-RANGE] daemon.drift_check_interval: "
        "0 is out of range 0.1-3600 seconds"
    ]


@pytest.mark.parametrize(
    ("text", "code", "key"),
    [
        ("[daemon]\naudit_keep = 0\n", "E-CONFIG-RANGE", "daemon.audit_keep"),
        ("[daemon]\naudit_max_bytes = -1\n", "E-CONFIG-RANGE", "daemon.audit_max_bytes"),
        ("[daemon]\nconntrack_resync_interval = 1e9\n", "E-CONFIG-RANGE", "daemon.conntrack"),
        ("[daemon]\ndrift_check_interval = true\n", "E-CONFIG-TYPE", "daemon.drift_check"),
        ("[daemon]\nstate_dir = 5\n", "E-CONFIG-TYPE", "daemon.state_dir"),
        ('[control]\nmode = "0999"\n', "E-CONFIG-VALUE", "control.mode"),
        ("[control]\nmode = 0o1777\n", "E-CONFIG-RANGE", "control.mode"),
        ('[control]\ngroup = "nobody-here"\n', "E-CONFIG-UNKNOWN-ID", "control.group"),
        ('[metrics]\nlisten = "9466"\n', "E-CONFIG-VALUE", "metrics.listen"),
        ("[roles]\nadmin = {users = ['bob']}\n", "E-CONFIG-UNKNOWN-ID", "roles.admin.users[0]"),
        ("[roles]\nadmin = {users = [-1]}\n", "E-CONFIG-RANGE", "roles.admin.users[0]"),
        ("[roles]\nadmin = {groups = 'x'}\n", "E-CONFIG-TYPE", "roles.admin.groups"),
        ("[roles]\nsandbox = {max_ttl = 'soon'}\n", "E-CONFIG-VALUE", "roles.sandbox.max_ttl"),
        ("daemon = 3\n", "E-CONFIG-TYPE", "daemon"),
        ("[daemon\n", "E-CONFIG-TOML", ""),
    ],
)
def test_each_class_of_config_error_has_its_code_and_key(text: str, code: str, key: str) -> None:
    (line,) = _errors(text)
    assert f"error[{code}] {key}" in line, line
    assert line.startswith("aitherfwd.toml:")


def test_unknown_keys_suggest_the_closest_known_one() -> None:
    assert _errors("[contrl]\nsocket = '/x'\n[daemon]\ndrift_check_intervall = 2\n") == [
        "aitherfwd.toml:1:1: error[E-CONFIG-UNKNOWN-KEY] contrl: "
        "unknown key 'contrl' (did you mean 'control'?)",
        "aitherfwd.toml:4:1: error[E-CONFIG-UNKNOWN-KEY] daemon.drift_check_intervall: "
        "unknown key 'drift_check_intervall' (did you mean 'drift_check_interval'?)",
    ]


def test_keys_inside_inline_tables_are_located_at_their_column() -> None:
    assert _errors("[roles]\nread = { users = [1], max_ttl = '1h' }\n") == [
        "aitherfwd.toml:2:23: error[E-CONFIG-UNKNOWN-KEY] roles.read.max_ttl: "
        "unknown key 'max_ttl'; allowed: users, groups"
    ]


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = (
        "[metrics]\nlisten = 9466\n"
        "[daemon]\ndrift_check_interval = 0\naudit_keep = 'five'\n"
        "[control]\nmax_body_bytes = 0\nmode = 'rw'\n"
    )
    assert [line.split(" ", 2)[:2] for line in _errors(text)] == [
        ["aitherfwd.toml:2:1:", "error[E-CONFIG-TYPE]"],
        ["aitherfwd.toml:4:1:", "error[E-CONFIG-RANGE]"],
        ["aitherfwd.toml:5:1:", "error[E-CONFIG-TYPE]"],
        ["aitherfwd.toml:7:1:", "error[E-CONFIG-RANGE]"],
        ["aitherfwd.toml:8:1:", "error[E-CONFIG-VALUE]"],
    ]


def test_toml_syntax_errors_keep_tomllib_position() -> None:
    assert _errors("[daemon]\naudit_keep = 2\naudit_keep = 3\n") == [
        "aitherfwd.toml:3:15: error[E-CONFIG-TOML] invalid TOML: Cannot overwrite a value"
    ]


def test_valid_values_within_bounds_are_taken() -> None:
    cfg = parse_config(
        "[daemon]\ndrift_check_interval = 0.5\n[control]\nmode = 0o600\ngroup = 'aitherfwd'\n",
        USERS.__getitem__,
        GROUPS.__getitem__,
    )
    assert cfg.drift_check_interval == 0.5 and cfg.socket_mode == 0o600
    assert cfg.socket_group == "aitherfwd"


def test_load_config_names_the_file_and_a_missing_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\ndrift_check_interval = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.diagnostics[0].render().startswith(f"{bad}:2:1: error[E-CONFIG-RANGE]")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert "error[E-CONFIG-FILE]" in info.value.message
    assert load_config(None) == DaemonConfig()


def test_run_with_a_bad_config_exits_64_with_the_located_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[control]\nmax_body_bytes = "1M"\n[daemon]\ndrift_check_interval = 0\n')
    result = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code == 64, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert lines == [
        f"{bad}:2:1: error[E-CONFIG-TYPE] control.max_body_bytes: must be an integer, got a string",
        f"{bad}:4:1: error[E-CONFIG-RANGE] daemon.drift_check_interval: "
        "0 is out of range 0.1-3600 seconds",
        "2 errors, 0 warnings",
    ]


def test_check_config_says_valid_or_lists_every_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[daemon]\ndrift_check_interval = 2.0\n")
    result = CliRunner().invoke(main, ["check-config", str(good)])
    assert result.exit_code == 0 and result.output == f"{good}: valid\n"
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\naudit_keep = 0\n")
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 64
    assert f"{bad}:2:1: error[E-CONFIG-RANGE] daemon.audit_keep" in result.output
    result = CliRunner().invoke(main, ["check-config", str(tmp_path / "none.toml")])
    assert result.exit_code == 64 and "error[E-CONFIG-FILE]" in result.output
