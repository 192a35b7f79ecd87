"""Fixtures of the tokend_client tests: the real daemon as a subprocess, the fake upstreams of tokend.testing,
and an upstream API to send requests to.

Run from the repository's root (`python -m pytest`): the daemon helpers of tokend's own test-suite are reused
from there, and tokend_client comes from its installed distribution (`pip install './clients/python[httpx,requests]'`).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.daemon import accepting, tokend_command, write_config
from tests.tools import group_shared_fixtures
from tokend.testing import FakeProviders, FakeServer, serve_fakes
from tokend_client_stack import MIN_REFRESH_INTERVAL, Stack, Upstream, start_daemon, wait_until

# The stack fixture below serves a whole module: its tests run on one pytest-xdist worker (tests/tools.py).
pytest_collection_modifyitems = pytest.hookimpl(tryfirst=True)(group_shared_fixtures)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's tokend settings, nor leaves its own behind."""
    for name in list(os.environ):
        if name.startswith("TOKEND_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One daemon, its fakes and an upstream API for a whole test module (tests count logins relatively)."""
    directory = tmp_path_factory.mktemp("stack")
    with serve_fakes() as fakes:
        upstream = Upstream(fakes.felloh, set(fakes.flotiq.api_keys))
        with FakeServer(upstream.app()) as server:
            upstream.url = server.url
            daemon = start_daemon(directory, fakes)
            try:
                yield Stack(fakes, daemon, upstream, directory)
            finally:
                daemon.kill()


@pytest.fixture
def upstream(stack: Stack) -> Iterator[Upstream]:
    # Past the last test's login by more than min_refresh_interval, so that this test's forced refresh logs
    # in: tokend answers one that comes sooner with its current token, which is the one rejected.
    time.sleep(MIN_REFRESH_INTERVAL * 2)
    stack.upstream.seen.clear()
    stack.upstream.reject_all = False
    yield stack.upstream
    stack.upstream.reject_all = False
    stack.fakes.felloh.recover()


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with serve_fakes() as providers:
        yield providers


@pytest.fixture
def socket_daemon(tmp_path: Path, fakes: FakeProviders) -> Iterator[Path]:
    """tokend on a unix socket (its config at tmp_path/tokend.toml); yields the socket's path."""
    path = tmp_path / "tokend.sock"
    config = write_config(tmp_path, fakes, min_refresh_interval=MIN_REFRESH_INTERVAL)
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nsocket = "{path}"\n'))
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=log, stderr=log)
    try:
        wait_until(lambda: accepting(path) or process.poll() is not None, what="tokend on its socket")
        assert process.poll() is None, (tmp_path / "daemon.log").read_text()
        yield path
    finally:
        process.kill()
        process.wait(timeout=10)
