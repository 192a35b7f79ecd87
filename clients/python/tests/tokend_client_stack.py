"""The pieces of the client tests' world: an upstream API to send requests to, and the real daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.daemon import Daemon, write_config
from tokend.testing import FakeFelloh, FakeProviders

# A forced refresh logs in only this long after the last login. Tiny, so that each test's refresh logs in
# whatever the tests before it did; the single-flight of the client is what keeps a storm to one refresh.
MIN_REFRESH_INTERVAL = 0.05


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """An upstream API in front of the fake Felloh: any method and path; a valid Felloh bearer token or a Flotiq
    key (header or query) gets 200 and an echo of the request, anything else 401. Every request is recorded."""

    felloh: FakeFelloh
    flotiq_keys: set[str]
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    reject_all: bool = False  # even a valid token gets 401 (an endpoint the token may not use)
    # Requests to /elsewhere/P get a 302 to this URL + /landed/elsewhere/P + their own query, as an nginx
    # `return 302 https://other/landed$request_uri` does.
    redirect_to: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", self._answer, methods=methods)])

    async def _answer(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.method, request.url.path, dict(request.query_params), dict(request.headers), body)
        with self._lock:
            self.seen.append(seen)
        if self.redirect_to is not None and request.url.path.startswith("/elsewhere/"):
            query = f"?{request.url.query}" if request.url.query else ""
            location = f"{self.redirect_to}/landed{request.url.path}{query}"
            return Response(status_code=302, headers={"Location": location})
        if self.reject_all or not self._authorised(seen):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"ok": True, "body": body.decode(), "query": seen.query})

    def _authorised(self, seen: Seen) -> bool:
        scheme, _, token = seen.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.felloh.is_valid(token):
            return True
        key = seen.headers.get("x-auth-token") or seen.query.get("auth_token")
        return key in self.flotiq_keys

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)


@dataclass
class Stack:
    fakes: FakeProviders
    daemon: Daemon
    upstream: Upstream
    directory: Path


def start_daemon(directory: Path, fakes: FakeProviders, *, extra: str = "", ready: bool = True) -> Daemon:
    config = write_config(directory, fakes, extra=extra, min_refresh_interval=MIN_REFRESH_INTERVAL)
    daemon = Daemon(config, log_path=directory / f"daemon-{time.monotonic_ns()}.log")
    daemon.start(ready=ready)
    return daemon



def wait_until(condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll every 20 ms, with a generous bound: CI machines are busy."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
