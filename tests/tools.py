"""Outside programs the tests drive (git, kubectl, nginx): skipped with how to get one where it is
missing, and a failure under CI=true, where .ci/run installs them and a skip would hide a gap."""

from __future__ import annotations

import os
import shutil
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest


def require(program: str, how: str) -> str:
    """The path of `program`, or skip (fail on CI) saying how to install it."""
    path = shutil.which(program) or (program if os.path.isfile(program) and os.access(program, os.X_OK) else None)
    if path is not None:
        return path
    message = f"{program} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


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
