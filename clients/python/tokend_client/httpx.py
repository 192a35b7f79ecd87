"""tokend credentials for httpx: `Auth`, with sync and async flows.

    import httpx
    from tokend_client.httpx import Auth

    with httpx.Client(base_url="https://sandbox.felloh.com", auth=Auth("felloh")) as api:
        api.get("/agent/organisations")

Needs the `httpx` extra: `pip install './clients/python[httpx]'` from a checkout
of tokend (or the built wheel with `[httpx]`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, TypeVar

import anyio.to_thread
import httpx

from tokend_client._auth import Origin, ProviderAuth, origin, without_query
from tokend_client._client import Client
from tokend_client._credential import Credential

__all__ = ["Auth"]

_A = TypeVar("_A")
_T = TypeVar("_T")


class Auth(httpx.Auth):
    """Adds provider `provider`'s headers and query parameters, from tokend, to every request.

    >>> client = httpx.Client(auth=Auth("felloh"))
    >>> async with httpx.AsyncClient(auth=Auth("felloh")) as client: ...

    On a 401 from the upstream API, it asks tokend for a refresh naming the token that was sent, and sends
    the request once more with the new one; requests of this process that hit the same 401 together share
    that one refresh. Never more than one retry. A request whose body cannot be sent twice (`content=` a
    generator or a file upload) is not retried: its 401 is returned. When tokend cannot give a new token
    (throttled, the login failed), the 401 is returned too.

    The credential goes only to the origin of the request it was added to: a 401 from another origin (after
    a redirect) is not retried, and a redirect to another origin is followed without the provider's headers
    and query parameters. httpx gives an Auth no say between the hops of a redirect it follows, so the
    credential is taken off the request as its headers are sent, through the `trace` extension that httpx
    carries from hop to hop (a `trace` of your own is still called). Transports that send nothing over the
    network (MockTransport, ASGITransport, WSGITransport) do not call it.

    A ready credential costs no request to tokend (see `tokend_client.Client`): with one, the async flow
    does no I/O of its own, and otherwise asks tokend in a worker thread, never blocking the event loop.
    `client` defaults to the process's shared `Client`.
    """

    requires_request_body = False  # reading a streamed body into memory to retry it is the caller's call
    requires_response_body = False

    def __init__(self, provider: str, *, client: Client | None = None) -> None:
        self._auth = ProviderAuth(provider, client=client)
        self.provider = provider

    def __repr__(self) -> str:
        return f"Auth({self.provider!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._auth.client.credential(self.provider)
        response = yield _with_credential(request, sent, _Scope)
        if response.status_code == 401 and _replayable(request) and _answered_at_home(request, response):
            fresh = self._auth.replacement(sent)
            if fresh is not None:
                yield _with_credential(request, fresh, _Scope)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self._auth.client
        sent = client.cached(self.provider)
        if sent is None:
            sent = await _in_thread(client.credential, self.provider)
        response = yield _with_credential(request, sent, _AsyncScope)
        if response.status_code == 401 and _replayable(request) and _answered_at_home(request, response):
            # Another request may have had the token replaced already: then no worker thread is needed.
            fresh = client.cached(self.provider)
            if fresh is None or fresh.token == sent.token:
                fresh = await _in_thread(self._auth.replacement, sent)
            if fresh is not None:
                yield _with_credential(request, fresh, _AsyncScope)


def _with_credential(request: httpx.Request, credential: Credential, scope: type[_Scope]) -> httpx.Request:
    request.headers.update(credential.headers)
    if credential.query:
        request.url = request.url.copy_merge_params(dict(credential.query))  # same names replaced
    theirs = request.extensions.get("trace")
    if isinstance(theirs, _Scope):  # a retry: scoped already, by the first try
        theirs = theirs.theirs
    request.extensions = {**request.extensions, "trace": scope(origin(str(request.url)), credential, theirs)}
    return request


def _answered_at_home(request: httpx.Request, response: httpx.Response) -> bool:
    return origin(str(response.request.url)) == origin(str(request.url))


class _Scope:
    """httpcore's `trace` callback that takes the credential off a request about to go to another origin."""

    def __init__(self, home: Origin, credential: Credential, theirs: Callable[..., Any] | None) -> None:
        self.home = home
        self.headers = {name.lower().encode("ascii") for name in credential.headers}
        self.query = set(credential.query)
        self.theirs = theirs

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self._scrub(event, info)
        if self.theirs is not None:
            self.theirs(event, info)

    def _scrub(self, event: str, info: dict[str, Any]) -> None:
        if not event.endswith(".send_request_headers.started"):
            return
        request = info["request"]  # an httpcore.Request, about to be written
        target = bytes(request.url.target)
        # Through a forwarding proxy the target is the whole URL, and the origin the proxy's own.
        absolute = target.startswith((b"http://", b"https://"))
        url = target.decode("latin-1") if absolute else str(httpx.URL(
            scheme=request.url.scheme.decode("ascii"), host=request.url.host.decode("ascii"),
            port=request.url.port, raw_path=target,
        ))
        if origin(url) == self.home:
            return
        request.headers[:] = [(name, value) for name, value in request.headers if name.lower() not in self.headers]
        if self.query:
            kept = without_query(url, self.query)
            request.url.target = kept.encode("latin-1") if absolute else bytes(httpx.URL(kept).raw_path)


class _AsyncScope(_Scope):
    async def __call__(self, event: str, info: dict[str, Any]) -> None:  # type: ignore[override]
        self._scrub(event, info)
        if self.theirs is not None:
            await self.theirs(event, info)


def _replayable(request: httpx.Request) -> bool:
    # A body held in memory (bytes, str, json=, data=, or read()) is a ByteStream; a generator, an async
    # iterator or a multipart upload is not, and may be consumed already.
    return isinstance(request.stream, httpx.ByteStream)


async def _in_thread(function: Callable[[_A], _T], argument: _A) -> _T:
    # anyio, not asyncio: httpx runs on trio too, and depends on anyio anyway.
    return await anyio.to_thread.run_sync(function, argument)
