"""How the gateway configures uvicorn: uvloop when it is installed (else asyncio's loop),
and the app served as it is — no per-message trace logger (uvicorn 0.17 added one when its
logger had no level) and no proxy-header rewriting (a local caller does not choose the
address it is seen with). Checked against whichever uvicorn is imported: the venv's, or
Debian's when it is first on PYTHONPATH."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from aitherfwd.gateway import serve
from aitherfwd.gateway.app import build_app
from tests.unit.gateway_helpers import SEED_POLICY, gateway


def test_the_event_loop_is_uvloop_when_installed_else_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert serve.event_loop() == "asyncio"
    monkeypatch.setattr(importlib.util, "find_spec", real)
    expected = "uvloop" if real("uvloop") is not None else "asyncio"
    assert serve.event_loop() == expected


def test_uvicorn_serves_the_app_with_no_middleware_of_its_own() -> None:
    app = build_app(gateway(SEED_POLICY.read_text())[0])
    root = logging.getLogger()
    level = root.level
    try:
        for at in (logging.INFO, logging.DEBUG):
            root.setLevel(at)
            config = serve.server_config(app, "127.0.0.1", 0)
            config.load()
            assert config.loaded_app is app
            assert config.http == "h11" and config.proxy_headers is False
    finally:
        root.setLevel(level)
