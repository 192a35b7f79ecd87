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
from typing import TypeVar

import anyio.to_thread
import httpx

from tokend_client._auth import ProviderAuth
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
        response = yield _with_credential(request, sent)
        if response.status_code == 401 and _replayable(request):
            fresh = self._auth.replacement(sent)
            if fresh is not None:
                yield _with_credential(request, fresh)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self._auth.client
        sent = client.cached(self.provider)
        if sent is None:
            sent = await _in_thread(client.credential, self.provider)
        response = yield _with_credential(request, sent)
        if response.status_code == 401 and _replayable(request):
            # Another request may have had the token replaced already: then no worker thread is needed.
            fresh = client.cached(self.provider)
            if fresh is None or fresh.token == sent.token:
                fresh = await _in_thread(self._auth.replacement, sent)
            if fresh is not None:
                yield _with_credential(request, fresh)


def _with_credential(request: httpx.Request, credential: Credential) -> httpx.Request:
    request.headers.update(credential.headers)
    if credential.query:
        request.url = request.url.copy_merge_params(dict(credential.query))  # same names replaced
    return request


def _replayable(request: httpx.Request) -> bool:
    # A body held in memory (bytes, str, json=, data=, or read()) is a ByteStream; a generator, an async
    # iterator or a multipart upload is not, and may be consumed already.
    return isinstance(request.stream, httpx.ByteStream)


async def _in_thread(function: Callable[[_A], _T], argument: _A) -> _T:
    # anyio, not asyncio: httpx runs on trio too, and depends on anyio anyway.
    return await anyio.to_thread.run_sync(function, argument)
