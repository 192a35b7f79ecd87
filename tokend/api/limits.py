"""Check first, then read a little: a plain ASGI wrapper in front of the routes.

A web framework reads a request's body before it knows whether the caller may send one (FastAPI parses a
JSON body before it runs the dependencies that hold the request checks), and answers a path it does not
know (404, 405, a redirect for a trailing slash) before any check. So every request except the probes
passes the request checks here, before anything reads its body or says anything about the path; and no
body is read beyond a small limit: a Content-Length over it is refused at once, a chunked body over it as
soon as it gets there.
"""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokend.api.fastpath import NO_STORE_HEADERS
from tokend.api.guard import RequestGuard

__all__ = ["BODY_LIMIT", "OPEN_PATHS", "RequestLimits"]

BODY_LIMIT = 64 * 1024  # the largest body any route takes (a refresh naming a token, a key's name) is far less
# The probes: no secret in them, and no body read. They answer without the X-Tokend-Request header.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class RequestLimits:
    """ASGI: the request checks on every path but the probes, then at most `body_limit` bytes of body.

    `streamed`: path prefixes whose routes pass bodies on as they come (a proxy) and bound them themselves:
    checked the same, but not capped here.
    """

    def __init__(
        self, app: ASGIApp, guard: RequestGuard, *, body_limit: int = BODY_LIMIT, streamed: tuple[str, ...] = ()
    ) -> None:
        self._app = app
        self._guard = guard
        self._limit = body_limit
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] not in OPEN_PATHS and (denial := self._guard.check(scope)) is not None:
            await _refuse(send, denial.status, denial.code, denial.message)
            return
        length = _body_length(scope)
        if length == 0 or scope["path"].startswith(self._streamed):
            await self._app(scope, receive, send)
        elif length is None:  # chunked: counted as it comes
            await _Capped(self._app, self._limit)(scope, receive, send)
        elif length > self._limit:
            await _refuse(send, 413, "too_large", f"A request body is at most {self._limit} bytes here.")
        else:  # the HTTP parser delivers no more than the Content-Length: nothing to count
            await self._app(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Capped:
    """One request whose body has no announced length (chunked): counted while the app reads it, and
    answered 413 once past the limit, whatever the app was doing with it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit
        self._read = 0
        self._started = self._refused = False  # whether the app has begun its answer; whether 413 was sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            self._read += len(message.get("body", b""))
            if self._read > self._limit and not self._refused:
                self._refused = True
                if not self._started:
                    await _refuse(send, 413, "too_large", f"A request body is at most {self._limit} bytes here.")
                raise _TooLarge
            return message

        async def unless_refused(message: Message) -> None:
            self._started = True
            if not self._refused:  # the app's own answer to the exception (a 500) is not sent after the 413
                await send(message)

        with contextlib.suppress(_TooLarge):
            await self._app(scope, counted, unless_refused)


def _body_length(scope: Scope) -> int | None:
    """The body's announced size (0 for none), or None for a body of unannounced size (chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0  # the HTTP parser has refused anything else
        if name == b"transfer-encoding":
            return None  # never both: the HTTP parser refuses a request with the two
    return 0


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    headers = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in NO_STORE_HEADERS.items()),
        # Whatever body follows is never read: closing is cheaper than reading it to find the next request.
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="tokend"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
