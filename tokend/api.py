"""The local HTTP surface: create_app(manager) -> FastAPI.

`GET /token/{name}` is the hot path: every app using tokend calls it, so a small fast path in front of
FastAPI answers it directly from bytes rendered once per credential. Anything it cannot answer at once (a check that
fails, a token not yet there, an unusual query) falls through to the FastAPI routes, which implement the
whole behaviour; the fast path is only a cache in front of them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from tokend import __version__
from tokend.admin_api import felloh_router
from tokend.credential import Credential, iso_utc
from tokend.errors import ConfigError, TokenUnavailable, UnknownProvider, UpstreamError
from tokend.felloh_keys import KeyAdminError, schedule_rotations
from tokend.guard import NOT_ADMIN, NOT_YOURS, Caller, Denial, RequestGuard
from tokend.manager import Manager
from tokend.metrics import CONTENT_TYPE, Metrics
from tokend.reloading import Reloader
from tokend.watch import SecretFileWatcher

__all__ = ["create_app"]

# Tokens must never sit in a browser's or a proxy's cache, nor be sniffed into something executable.
_NO_STORE_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
_NO_STORE = [(name.encode(), value.encode()) for name, value in _NO_STORE_HEADERS.items()]
_JSON = [(b"content-type", b"application/json"), *_NO_STORE]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"), *_NO_STORE]


class _Rendered:
    """One credential's answers, built once. Only `expires_in` changes, once a second, so the JSON body and
    its headers are rebuilt at most once a second too."""

    __slots__ = ("_json", "_json_head", "_json_tail", "_second", "credential", "expires_at", "raw")

    def __init__(self, name: str, credential: Credential) -> None:
        head = {"provider": name, "token": credential.token, "token_type": credential.token_type,
                "expires_at": iso_utc(credential.expires_at)}
        tail = {"headers": dict(credential.headers), "query": dict(credential.query)}
        head_json = json.dumps(head, separators=(", ", ": "))
        tail_json = json.dumps(tail, separators=(", ", ": "))
        self._json_head = (head_json[:-1] + ', "expires_in": ').encode()
        self._json_tail = (", " + tail_json[1:]).encode()
        self.credential = credential
        self.expires_at = credential.expires_at
        self.raw = _answer(_TEXT, credential.token.encode())
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


class _Renderer:
    """Renders each provider's current credential once; a new credential is rendered anew."""

    def __init__(self) -> None:
        self._cache: dict[str, _Rendered] = {}  # one entry per provider name: nothing to forget

    def __call__(self, name: str, credential: Credential) -> _Rendered:
        rendered = self._cache.get(name)
        if rendered is None or rendered.credential is not credential:
            rendered = self._cache[name] = _Rendered(name, credential)
        return rendered


class _TokenFastPath:
    """Answers a plain, allowed `GET /token/{name}` whose credential is ready; declines all else.

    A plain method, not a coroutine: the hot path creates no coroutine of its own beyond the app's call.
    """

    def __init__(self, manager: Manager, guard: RequestGuard, renderer: _Renderer) -> None:
        self._manager, self._guard, self._renderer = manager, guard, renderer
        self.served = 0  # answers given here, for /metrics (an int: cheaper than a labelled counter)

    def answer(self, scope: Scope) -> _Answer | None:
        """The answer to send, or None for the FastAPI routes to deal with."""
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/token/"):
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
        self.served += 1
        return rendered.raw if raw else rendered.json(now)


class _TokendApp(FastAPI):
    """FastAPI with the token fast path in front of all of it, FastAPI's own per-request work included."""

    fast_path: _TokenFastPath | None = None
    requests: Tally[tuple[str, int]] | None = None  # (route, status) -> count, for /metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_path is not None and (answer := self.fast_path.answer(scope)) is not None:
            await send(answer[0])
            await send(answer[1])
            return
        if scope["type"] != "http" or self.requests is None:
            await super().__call__(scope, receive, send)
            return
        status = 500  # what the client sees if nothing is sent at all

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] == "OPTIONS":
                # A CORS preflight, on any path. No CORS header is ever sent, so a browser would stop
                # there anyway; the refusal says so plainly.
                await _error(403, "forbidden", "Cross-origin requests are refused: tokend serves local "
                             "programs, never web pages.")(scope, receive, counted)
            else:
                await super().__call__(scope, receive, counted)
        finally:
            # Routes by their template, so that a scan of random paths cannot grow the label set.
            self.requests[(getattr(scope.get("route"), "path", "other"), status)] += 1


def _no_store(response: Response) -> None:
    response.headers.update(_NO_STORE_HEADERS)


class _Denied(Exception):
    def __init__(self, denial: Denial) -> None:
        self.denial = denial


def _caller(request: Request) -> Caller:
    """The request checks, then who the caller is (FastAPI computes it once per request)."""
    guard: RequestGuard = request.app.state.guard
    denial = guard.check(request.scope)
    if denial is not None:
        raise _Denied(denial)
    caller = guard.identify(request.scope, request.app.state.manager.settings.clients)
    if isinstance(caller, Denial):
        raise _Denied(caller)
    return caller


Asking = Annotated[Caller, Depends(_caller)]


def _reader(name: str, caller: Asking) -> None:
    if not caller.may_read(name):
        raise _Denied(NOT_YOURS)  # also for a name that does not exist: a key learns nothing outside its list


def _administrator(request: Request, caller: Asking) -> None:
    if not caller.may_administer(request.path_params.get("name")):
        raise _Denied(NOT_ADMIN)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {**_NO_STORE_HEADERS, "www-authenticate": 'Bearer realm="tokend"'} if status == 401 else _NO_STORE_HEADERS
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


def create_app(
    manager: Manager,
    *,
    reloader: Reloader | None = None,
    extras: Sequence[AbstractAsyncContextManager[Any]] = (),
) -> FastAPI:
    """The local API for `manager`. The app's lifespan starts and stops the manager, then the reloader
    (SIGHUP and POST /reload; none when the settings did not come from a file), then each of `extras`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with manager, AsyncExitStack() as stack:
            schedule_rotations(manager)
            SecretFileWatcher(manager).start()
            if reloader is not None:
                await stack.enter_async_context(reloader)
            for extra in extras:
                await stack.enter_async_context(extra)
            yield

    app = _TokendApp(
        title="tokend", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    guard = app.state.guard = RequestGuard(manager.settings.server)
    app.state.manager = manager
    renderer = _Renderer()
    app.fast_path = fast_path = _TokenFastPath(manager, guard, renderer)
    metrics = Metrics(manager, fast_answers=lambda: fast_path.served)
    app.requests = metrics.requests
    _add_error_handlers(app)


    def token_response(name: str, credential: Credential, format: str) -> Response:
        rendered = renderer(name, credential)
        if format == "raw":
            return Response(rendered.raw[1]["body"], media_type="text/plain", headers=_NO_STORE_HEADERS)
        body = rendered.json(time.time())[1]["body"]
        return Response(body, media_type="application/json", headers=_NO_STORE_HEADERS)

    def checked_format(format: str) -> str:
        if format not in ("json", "raw"):
            raise StarletteHTTPException(400, 'format must be "json" or "raw"')
        return format

    @app.get("/token/{name}", dependencies=[Depends(_reader)])
    async def get_token(name: str, format: str = "json") -> Response:
        format = checked_format(format)
        return token_response(name, await manager.get(name), format)

    @app.post("/token/{name}/refresh", dependencies=[Depends(_reader)])
    async def refresh_token(name: str, format: str = "json") -> Response:
        format = checked_format(format)
        try:
            credential = await manager.refresh(name)
        except UpstreamError as exc:
            return _error(502, "refresh_failed", exc.message, provider=name,
                          upstream_status=exc.status, request_id=exc.request_id)
        return token_response(name, credential, format)

    @app.post("/reload", dependencies=[Depends(_administrator)])
    async def reload() -> JSONResponse:
        if reloader is None:
            return _error(409, "not_reloadable", "This tokend was not started from a config file.")
        try:
            changes = await reloader.reload("POST /reload")
        except ConfigError as exc:
            return _error(400, "bad_config", f"{exc.message}; the running config stays", problems=exc.problems)
        return JSONResponse(dataclasses.asdict(changes), headers=_NO_STORE_HEADERS)

    @app.get("/status")
    async def status(caller: Asking) -> dict[str, Any]:
        providers = {name: state for name, state in manager.status().items() if caller.may_read(name)}
        fleet = {} if manager.fleet is None else {"fleet": manager.fleet.status()}
        return {"version": __version__, "ready": manager.ready(providers), "providers": providers, **fleet}

    # A created key's secret travels in an answer here: the same checks and no-store as a token.
    app.include_router(felloh_router(manager), dependencies=[Depends(_administrator), Depends(_no_store)])

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        # No key needed, like /livez and /readyz: provider names, counts and times, never a secret.
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = manager.ready()
        states = {name: manager.state(name).value for name in manager.names}
        return JSONResponse({"ready": ready, "providers": states}, status_code=200 if ready else 503)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_Denied)
    async def denied(request: Request, exc: _Denied) -> JSONResponse:
        return _error(exc.denial.status, exc.denial.code, exc.denial.message)

    @app.exception_handler(UnknownProvider)
    async def unknown(request: Request, exc: UnknownProvider) -> JSONResponse:
        return _error(404, "unknown_provider", exc.message, provider=exc.provider)

    @app.exception_handler(TokenUnavailable)
    async def unavailable(request: Request, exc: TokenUnavailable) -> JSONResponse:
        return _error(503, "token_unavailable", exc.message, provider=exc.provider,
                      next_attempt=iso_utc(exc.next_attempt))

    @app.exception_handler(KeyAdminError)
    async def refused(request: Request, exc: KeyAdminError) -> JSONResponse:
        return _error(exc.status, "refused", exc.message)

    @app.exception_handler(UpstreamError)
    async def upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        return _error(502, "upstream_error", exc.message, provider=exc.provider, upstream_status=exc.status,
                      request_id=exc.request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input back; say what is wrong without it.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(400, "bad_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))
