"""The local HTTP API: create_app(daemon) -> an ASGI app, for whatever serves what `Served` names.

The routes are FastAPI's; in front of them sit three plain ASGI wrappers: the token fast path
(tokend.api.fastpath), a counter of answers for /metrics that also refuses CORS preflights, then the request
checks and the body limit for every route (tokend.api.limits).
Provider kinds add routes of their own through their extensions (Felloh's key management).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokend._version import __version__
from tokend.api.fastpath import NO_STORE_HEADERS, Renderer, TokenFastPath
from tokend.api.guard import NOT_ADMIN, NOT_YOURS, Caller, Denial, RequestGuard
from tokend.api.limits import RequestLimits
from tokend.api.metrics import CONTENT_TYPE, Metrics
from tokend.config.fields import shown_url
from tokend.credential import MAX_TOKEN_LENGTH, Credential, iso_utc
from tokend.errors import (
    ConfigError,
    FleetUnavailable,
    OperationRefused,
    RefreshThrottled,
    TokenUnavailable,
    UnknownProvider,
    UpstreamError,
)
from tokend.extensions import Extension
from tokend.providers import ProviderConfig
from tokend.renewal.manager import Manager
from tokend.renewal.reloading import Reloader

__all__ = ["Served", "create_app"]

class _CountedRequests:
    """ASGI: counts answers by route template and status for /metrics, and refuses CORS preflights."""

    def __init__(self, app: ASGIApp, requests: Tally[tuple[str, int]]) -> None:
        self._app = app
        self._requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
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
                await self._app(scope, receive, counted)
        finally:
            # Routes by their template, so that a scan of random paths cannot grow the label set.
            self._requests[(getattr(scope.get("route"), "path", "other"), status)] += 1


def _no_store(response: Response) -> None:
    response.headers.update(NO_STORE_HEADERS)


class _Denied(Exception):
    def __init__(self, denial: Denial) -> None:
        self.denial = denial


def _error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    headers = {**NO_STORE_HEADERS, **(headers or {})}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="tokend"'
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


class _Wrapping(Protocol):
    def wrap(self, app: ASGIApp) -> ASGIApp:
        """`app` behind this part, which answers the requests that are its own."""
        ...


class ProxyPart(_Wrapping, Protocol):
    """The auth-injecting proxy: /proxy/... and the providers' own listeners."""

    @property
    def own_addresses(self) -> frozenset[Any]: ...

    @property
    def stats(self) -> Collector: ...


class MetadataPart(_Wrapping, Protocol):
    """The cloud SDKs' metadata endpoints, on listeners of their own."""

    @property
    def addresses(self) -> frozenset[Any]: ...

    def environment(self, may_read: Any) -> dict[str, str]: ...


class SinksPart(Protocol):
    def status(self, name: str) -> list[dict[str, Any]]: ...


class FleetPart(Protocol):
    def status(self) -> dict[str, Any]: ...

    def collector(self) -> Collector: ...


class Served(Protocol):
    """What the API asks of the daemon it serves (tokend.daemon.Daemon), part by part."""

    @property
    def manager(self) -> Manager: ...

    @property
    def where(self) -> str: ...

    @property
    def reloader(self) -> Reloader | None: ...

    @property
    def extensions(self) -> Sequence[Extension]: ...

    @property
    def sinks(self) -> SinksPart: ...

    @property
    def fleet(self) -> FleetPart | None: ...

    @property
    def proxy(self) -> ProxyPart: ...

    @property
    def metadata(self) -> MetadataPart: ...


def create_app(daemon: Served) -> ASGIApp:
    """The local API for a daemon's parts, the daemon's proxy included (/proxy/... and the providers' own
    listeners). The daemon is started and stopped by its owner (tokend.daemon.serve)."""
    manager = daemon.manager
    guard = RequestGuard(manager.settings.server)
    # No redirect for a trailing slash: an answer before the request checks, with a Location built from Host.
    app = FastAPI(title="tokend", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    _add_error_handlers(app)
    checks = _Checks(guard, manager)
    _token_routes(app, manager, checks)
    _daemon_routes(app, daemon, checks)
    requests: Tally[tuple[str, int]] = Tally()
    behind: ASGIApp = _CountedRequests(RequestLimits(app, guard), requests)
    behind = daemon.proxy.wrap(behind)  # /proxy/... and the providers' own listeners, behind the token fast path
    behind = daemon.metadata.wrap(behind)  # the metadata listeners, by the address a request came in on
    # Outermost, so that GET /token costs no other wrapper's call; it answers nothing that came in on a
    # provider's own proxy listener or a metadata listener, where /token/... is not tokend's route.
    fast_path = TokenFastPath(behind, manager, guard, Renderer(),
                              elsewhere=daemon.proxy.own_addresses | daemon.metadata.addresses)
    collectors = [part.collector() for part in (daemon.fleet,) if part is not None]
    metrics = Metrics(manager, requests=requests, fast_answers=lambda: fast_path.served,
                      collectors=[*collectors, daemon.proxy.stats])
    _health_routes(app, manager, metrics)
    return fast_path


class _Checks:
    """The request checks as FastAPI dependencies: who the caller is, and what it may do."""

    def __init__(self, guard: RequestGuard, manager: Manager) -> None:
        self._guard = guard
        self._manager = manager
        # A default, not an Annotated alias: annotations here are strings, read as globals.
        self.asking = Depends(self.caller)
        self.reader = Depends(self._reader())
        self.administrator = Depends(self._administrator())

    def caller(self, request: Request) -> Caller:
        """The request checks, then who the caller is (FastAPI computes it once per request)."""
        denial = self._guard.check(request.scope)
        if denial is not None:
            raise _Denied(denial)
        found = self._guard.identify(request.scope, self._manager.settings.clients)
        if isinstance(found, Denial):
            raise _Denied(found)
        return found

    def _reader(self) -> Callable[..., None]:
        def reader(name: str, who: Caller = self.asking) -> None:
            if not who.may_read(name):
                raise _Denied(NOT_YOURS)  # also for a name that does not exist: a key learns nothing outside its list
        return reader

    def _administrator(self) -> Callable[..., None]:
        def administrator(request: Request, who: Caller = self.asking) -> None:
            if not who.may_administer(request.path_params.get("name")):
                raise _Denied(NOT_ADMIN)
        return administrator


def _token_routes(app: FastAPI, manager: Manager, checks: _Checks) -> None:
    """GET /token/NAME (when the fast path passes a request on) and POST /token/NAME/refresh."""
    renderer = Renderer()

    def token_response(name: str, credential: Credential, format: str, **headers: str) -> Response:
        rendered = renderer(name, credential)
        if format == "raw":
            if rendered.raw is None:
                return _error(400, "no_raw_form", f"{name} holds an AWS credential, three values (an access key id, "
                              "its secret and a session token) that no single line can carry: ask for JSON, or use "
                              "tokend aws-credential or the [metadata.aws] endpoint", provider=name)
            return Response(rendered.raw[1]["body"], media_type="text/plain", headers={**NO_STORE_HEADERS, **headers})
        body = rendered.json(time.time())[1]["body"]
        return Response(body, media_type="application/json", headers={**NO_STORE_HEADERS, **headers})

    @app.get("/token/{name}", dependencies=[checks.reader])
    async def get_token(name: str, format: str = "json") -> Response:
        format = _checked_format(format)
        return token_response(name, await manager.get(name), format)

    @app.post("/token/{name}/refresh", dependencies=[checks.reader])
    async def refresh_token(name: str, request: Request, format: str = "json") -> Response:
        format = _checked_format(format)
        rejected = await _rejected_token(request)  # read only now: after the request checks
        before = manager.current(name, time.time())
        try:
            credential = await manager.refresh(name, rejected)
        except RefreshThrottled as exc:
            wait = max(1, math.ceil(exc.retry_after))
            return _error(429, "refresh_throttled", exc.message, headers={"retry-after": str(wait)}, provider=name,
                          retry_after=wait)
        except FleetUnavailable as exc:
            wait = max(1, math.ceil(exc.retry_after or 1))
            return _error(503, "fleet_unavailable", exc.message, headers={"retry-after": str(wait)}, provider=name,
                          retry_after=wait)
        except UpstreamError as exc:
            return _error(502, "refresh_failed", exc.message, provider=name,
                          upstream_status=exc.status, request_id=exc.request_id)
        # Says whether this answer holds a token from a new login, or the one already held (a refresh
        # within min_refresh_interval, or one naming a token that had already been replaced).
        new_login = "no" if credential is before else "yes"
        return token_response(name, credential, format, **{"x-tokend-new-login": new_login})


def _checked_format(format: str) -> str:
    if format not in ("json", "raw"):
        raise StarletteHTTPException(400, 'format must be "json" or "raw"')
    return format


def _daemon_routes(app: FastAPI, daemon: Served, checks: _Checks) -> None:
    """POST /reload, GET /status, GET /metadata/environment, and the routes of the kinds' extensions."""
    manager = daemon.manager

    @app.post("/reload", dependencies=[checks.administrator])
    async def reload() -> JSONResponse:
        if daemon.reloader is None:
            return _error(409, "not_reloadable", "This tokend was not started from a config file.")
        try:
            changes = await daemon.reloader.reload("POST /reload")
        except ConfigError as exc:
            return _error(400, "bad_config", f"{exc.message}; the running config stays", problems=exc.problems)
        return JSONResponse(dataclasses.asdict(changes), headers=NO_STORE_HEADERS)

    @app.get("/status")
    async def status(who: Caller = checks.asking) -> dict[str, Any]:
        providers = {name: state for name, state in manager.status().items() if who.may_read(name)}
        for name, state in providers.items():
            if sinks := daemon.sinks.status(name):
                state["sinks"] = sinks
            if (config := manager.provider_config(name)).proxy:
                state["proxy"] = {"target": shown_url(config.proxy_target or ""),
                                  "url": _proxy_url(daemon.where, name, config.proxy_listen)}
            state.update(_tool_settings(config, manager.current(name, time.time())))
        fleet = {} if daemon.fleet is None else {"fleet": daemon.fleet.status()}
        return {"version": __version__, "ready": manager.ready(providers), "providers": providers, **fleet}

    @app.get("/metadata/environment")
    async def metadata_environment(who: Caller = checks.asking) -> JSONResponse:
        # For `tokend exec`: the metadata endpoints' variables, Azure's secret only to a caller that may
        # read every provider it serves.
        return JSONResponse({"environment": daemon.metadata.environment(who.may_read)}, headers=NO_STORE_HEADERS)

    for extension in daemon.extensions:
        if (router := extension.router()) is not None:
            # An extension's answers may carry secrets (a created key): the same checks and no-store as a token.
            app.include_router(router, dependencies=[checks.administrator, Depends(_no_store)])


def _health_routes(app: FastAPI, manager: Manager, metrics: Metrics) -> None:
    """/livez, /readyz and /metrics: no key needed; provider names, states, counts and times, never a secret."""

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = manager.ready()
        states = {name: manager.state(name).value for name in manager.names}
        return JSONResponse({"ready": ready, "providers": states}, status_code=200 if ready else 503)


def _tool_settings(config: ProviderConfig, credential: Credential | None) -> dict[str, Any]:
    """What the git and Docker credential helpers match a request against (tokend.outputs): the registries
    configured, else the one the current credential names (ECR's)."""
    shown: dict[str, Any] = {}
    if config.git_hosts or config.git_user:
        shown["git"] = {"hosts": list(config.git_hosts), "username": config.git_user}
    registries = config.docker_registries or ((credential.registry,) if credential and credential.registry else ())
    if registries and config.registry_user:
        shown["docker"] = {"registries": list(registries), "username": config.registry_user}
    return shown


def _proxy_url(where: str, name: str, listen: object) -> str:
    """Where a client sends a provider's proxied requests: its own listener, else /proxy/NAME on the API."""
    if listen is not None:
        text = str(listen)
        return f"unix:{text}" if text.startswith("/") else f"http://{text}"
    return f"{where}/proxy/{name}" if where.startswith("http") else f"unix:{where}/proxy/{name}"


async def _rejected_token(request: Request) -> str | None:
    """The token a refresh names as refused upstream (JSON `{"rejected": "..."}`), or None for a plain refresh.
    The body is already bounded by RequestLimits, in front of every route."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise StarletteHTTPException(
            400, 'the body must be JSON: {"rejected": "<the token refused upstream>"}') from None
    rejected = parsed.get("rejected") if isinstance(parsed, dict) else None
    if not isinstance(rejected, str) or not rejected or set(parsed) != {"rejected"}:
        raise StarletteHTTPException(400, 'the body must be {"rejected": "<the token refused upstream>"}')
    if len(rejected) > MAX_TOKEN_LENGTH:  # no token tokend serves is longer: it cannot be one of ours
        raise StarletteHTTPException(400, f"the rejected token is longer than {MAX_TOKEN_LENGTH} characters, "
                                     "the longest tokend serves")
    return rejected


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_Denied)
    async def denied(request: Request, exc: _Denied) -> JSONResponse:
        return _error(exc.denial.status, exc.denial.code, exc.denial.message)

    @app.exception_handler(UnknownProvider)
    async def unknown(request: Request, exc: UnknownProvider) -> JSONResponse:
        return _error(404, "unknown_provider", exc.message, provider=exc.provider)

    @app.exception_handler(TokenUnavailable)
    async def unavailable(request: Request, exc: TokenUnavailable) -> JSONResponse:
        headers = None if exc.retry_after is None else {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
        return _error(503, exc.code, exc.message, headers=headers, provider=exc.provider,
                      next_attempt=iso_utc(exc.next_attempt))

    @app.exception_handler(OperationRefused)
    async def refused(request: Request, exc: OperationRefused) -> JSONResponse:
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
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))
