"""The token fast path: a plain ASGI wrapper in front of the API that answers a plain, allowed
`GET /token/{name}` whose credential is ready, from bytes rendered once per credential.

Every app using tokend calls that route, so it skips the web framework's per-request work. Anything it
cannot answer at once (a check that fails, a token not yet there, an unusual query) goes on to the app
behind it, which implements the whole behaviour: the fast path is only a cache in front of it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tokend.api.guard import Denial, RequestGuard
from tokend.credential import Credential, iso_utc
from tokend.renewal.manager import Manager

__all__ = ["NO_STORE_HEADERS", "Renderer", "TokenFastPath"]

# Tokens must never sit in a browser's or a proxy's cache, nor be sniffed into something executable.
NO_STORE_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
_NO_STORE = [(name.encode(), value.encode()) for name, value in NO_STORE_HEADERS.items()]
_JSON = [(b"content-type", b"application/json"), *_NO_STORE]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"), *_NO_STORE]


class _Rendered:
    """One credential's answers, built once. Only `expires_in` changes, once a second, so the JSON body and
    its headers are rebuilt at most once a second too."""

    __slots__ = ("_json", "_json_head", "_json_tail", "_second", "credential", "expires_at", "raw")
    raw: _Answer | None

    def __init__(self, name: str, credential: Credential) -> None:
        head = {"provider": name, "token": credential.token, "token_type": credential.token_type,
                "expires_at": iso_utc(credential.expires_at)}
        tail: dict[str, Any] = {"headers": dict(credential.headers), "query": dict(credential.query)}
        if credential.aws is not None:  # three values, for an SDK's credentials: nothing to add to a request
            tail["type"] = "aws"
            tail["aws"] = {"access_key_id": credential.aws.access_key_id,
                           "secret_access_key": credential.aws.secret_access_key,
                           "session_token": credential.token, "expiration": iso_utc(credential.expires_at)}
        head_json = json.dumps(head, separators=(", ", ": "))
        tail_json = json.dumps(tail, separators=(", ", ": "))
        self._json_head = (head_json[:-1] + ', "expires_in": ').encode()
        self._json_tail = (", " + tail_json[1:]).encode()
        self.credential = credential
        self.expires_at = credential.expires_at
        # None: no raw form (an AWS credential is three values; the app answers 400 saying so).
        self.raw = None if credential.aws is not None else _answer(_TEXT, credential.token.encode())
        self._second: int | None = None  # the expires_in of the JSON answer built last (-1: never expires)
        self._json = _answer(_JSON, b"")

    def json(self, now: float) -> _Answer:
        """The JSON answer at time `now`."""
        second = -1 if self.expires_at is None else max(0, int(self.expires_at - now))
        if second != self._second:
            expires_in = b"null" if second == -1 else str(second).encode()
            self._second, self._json = second, _answer(_JSON, self._json_head + expires_in + self._json_tail)
        return self._json


# An answer as the two ASGI messages that send it, built once and sent as they are (uvicorn only reads them).
_Answer = tuple[dict[str, Any], dict[str, Any]]


def _answer(headers: list[tuple[bytes, bytes]], body: bytes) -> _Answer:
    start = {"type": "http.response.start", "status": 200,
             "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


class Renderer:
    """Renders each provider's current credential once; a new credential is rendered anew."""

    def __init__(self) -> None:
        self._cache: dict[str, _Rendered] = {}  # one entry per provider name: nothing to forget

    def __call__(self, name: str, credential: Credential) -> _Rendered:
        rendered = self._cache.get(name)
        if rendered is None or rendered.credential is not credential:
            rendered = self._cache[name] = _Rendered(name, credential)
        return rendered


class TokenFastPath:
    """ASGI: answers a plain, allowed `GET /token/{name}` whose credential is ready; passes all else to `app`."""

    def __init__(
        self, app: ASGIApp, manager: Manager, guard: RequestGuard, renderer: Renderer,
        *, elsewhere: frozenset[Any] = frozenset(),
    ) -> None:
        """`elsewhere`: server addresses whose requests are never tokend's own (the proxy's listeners)."""
        self._app = app
        self._manager, self._guard, self._renderer = manager, guard, renderer
        self._elsewhere = elsewhere
        self.served = 0  # answers given here, for /metrics (an int: cheaper than a labelled counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answer(scope)
        if answer is None:
            await self._app(scope, receive, send)
            return
        await send(answer[0])
        await send(answer[1])

    def answer(self, scope: Scope) -> _Answer | None:
        """The answer to send, or None for the app behind to deal with. A plain method, not a coroutine:
        the hot path creates no coroutine of its own beyond the wrapper's call."""
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/token/"):
            return None
        if self._elsewhere and scope.get("server") in self._elsewhere:
            return None
        query = scope["query_string"]
        raw = query == b"format=raw"
        if (not raw and query not in (b"", b"format=json")) or self._guard.check(scope) is not None:
            return None
        name = scope["path"][7:]
        if clients := self._manager.settings.clients:
            caller = self._guard.identify(scope, clients)
            if isinstance(caller, Denial) or not caller.may_read(name):
                return None
        now = time.time()
        credential = self._manager.current(name, now)
        if credential is None:
            return None
        rendered = self._renderer(name, credential)
        answer = rendered.raw if raw else rendered.json(now)
        if answer is not None:
            self.served += 1
        return answer
