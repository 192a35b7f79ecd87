"""Commands some tests need beyond Python, pip, git and node, and a small threaded HTTP server for the
fakes that stand in front of them (git http-backend, a Kubernetes API server).

On a developer's machine a test whose command is missing is skipped, its reason saying how to get it
(pytest's summary lists each). Under CI (`CI=true`, as `.ci/run` runs) the same is a failure: CI installs
every one of them, so a skip there would hide a test that never ran.
"""

from __future__ import annotations

import os
import shutil
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

DEBIAN = "Debian/Ubuntu: apt-get install"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tool(name: str, how_to_get: str) -> str:
    """The full path of command `name` (or of the file, for a path); skip, or fail under CI, without it."""
    found = shutil.which(name)
    if found is not None:
        return found
    # The summary line points at this file, where the skip is raised: the reason names the test file
    # instead (not the test: a module's fixture is set up during its first test, and skips them all).
    test_file = os.environ.get("PYTEST_CURRENT_TEST", "").split("::", 1)[0]
    reason = f"{test_file}: needs {name}, which is not installed ({how_to_get})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing command is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


SHARED_SCOPES = {"package", "module", "class"}


def group_shared_fixtures(items: list[pytest.Item]) -> None:
    """Mark the tests that use a fixture wider than one test (a module's daemon, a package's server) with
    pytest-xdist's `xdist_group`, one group per module (or package): `--dist loadgroup` then runs each such
    module's tests on one worker, in order, the fixture set up once, while every other test goes wherever
    a worker is free. Used as `pytest_collection_modifyitems` (tryfirst, before xdist reads the marks)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        definitions = getattr(item, "_fixtureinfo", None)
        scopes = {definition[-1].scope: definition[-1].baseid
                  for definition in (definitions.name2fixturedefs.values() if definitions else ())
                  if definition and definition[-1].scope in SHARED_SCOPES}
        if scopes:
            group = scopes["package"] or "." if "package" in scopes else item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(group))


class ThreadedHTTPServer:
    """An http.server on 127.0.0.1 and a free port, in a thread: every GET and POST goes to `handle`.
    `tls`: a server-side SSL context, for HTTPS."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None], *, tls: ssl.SSLContext | None = None) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                handle(self)

            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._http.socket = tls.wrap_socket(self._http.socket, server_side=True)
        self.host = f"127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
