from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.daemon import Daemon, write_config
from tests.tools import group_shared_fixtures
from tokend.testing import FakeOIDCIssuer, FakeProviders, FakeServer, serve_fakes

# Under pytest-xdist (`python -m tests` runs with it), the tests that share a fixture wider than one test,
# such as a module's daemon, run on one worker; see group_shared_fixtures.
pytest_collection_modifyitems = pytest.hookimpl(tryfirst=True)(group_shared_fixtures)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's tokend settings, nor leaves its own behind."""
    for name in list(os.environ):
        if name.startswith("TOKEND_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with serve_fakes() as providers:
        yield providers


@pytest.fixture
def daemon_factory(tmp_path, fakes):  # type: ignore[no-untyped-def]
    """Start real `tokend run` subprocesses against the fakes; all are stopped at the end of the test."""
    started: list[Daemon] = []

    def start(extra: str = "", **provider_options: object) -> Daemon:
        config = write_config(tmp_path, fakes, extra=extra, **provider_options)
        daemon = Daemon(config, log_path=tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def issuer() -> Iterator[FakeOIDCIssuer]:
    """An OIDC issuer (a CI platform's, a cluster's) on a free port: the subject tokens of the keyless kinds."""
    fake = FakeOIDCIssuer()
    with FakeServer(fake.app) as server:
        fake.url = server.url
        yield fake
