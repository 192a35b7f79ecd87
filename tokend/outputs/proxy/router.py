"""The proxy in front of the local API: its parts for one daemon, and the plain ASGI wrapper that routes to it.

    proxy = Proxy(manager, guard, clients=lambda: manager.settings.clients, listeners=..., tls=...)
    asgi_app = proxy.wrap(local_api)     # /proxy/{name}/... and the providers' own listeners go to the proxy
    async with proxy: ...                # its upstream connections are closed on the way out

The data path (tokend.outputs.proxy.app, .pool) is loaded on the first proxied request: a daemon that proxies
nothing does not carry it (about a megabyte of resident memory).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tokend.api.guard import RequestGuard
from tokend.config.tables import ClientConfig
from tokend.outputs.proxy.listen import Listener
from tokend.outputs.proxy.stats import ProxyStats

if TYPE_CHECKING:
    from tokend.api.connections import Budget
    from tokend.outputs.proxy.app import Credentials, ProxyApp
    from tokend.outputs.proxy.pool import Pool

__all__ = ["Proxy", "ProxyRouter"]


class Proxy:
    """The proxy's parts: one upstream pool and one set of figures, shared by the local API's /proxy/ route
    and every provider's own listener (each with the request checks of the listener it is on)."""

    def __init__(self, credentials: Credentials, guard: RequestGuard, *,
                 clients: Callable[[], Mapping[str, ClientConfig]], tls: Callable[[], ssl.SSLContext],
                 listeners: Sequence[Listener] = (), budget: Budget | None = None) -> None:
        self._credentials, self._guard, self._clients, self._tls = credentials, guard, clients, tls
        self._budget = budget
        self._listeners = list(listeners)
        self._pool: Pool | None = None
        self.stats = ProxyStats(opened=lambda: self._pool.opened if self._pool is not None else 0)
        self._apps: tuple[ProxyApp, dict[Any, ProxyApp]] | None = None

    def apps(self) -> tuple[ProxyApp, dict[Any, ProxyApp]]:
        """The app for /proxy/..., and one per own listener by its address; made on first use."""
        if self._apps is None:
            from tokend.outputs.proxy.app import ProxyApp
            from tokend.outputs.proxy.checks import request_check
            from tokend.outputs.proxy.pool import Pool

            pool = self._pool = Pool(self._tls, self._budget)
            main = ProxyApp(self._credentials, request_check(self._guard, self._clients), pool, self.stats)
            own = {
                listener.address: ProxyApp(self._credentials,
                                           request_check(RequestGuard(listener.server), self._clients),
                                           pool, self.stats, provider=listener.provider)
                for listener in self._listeners
            }
            self._apps = main, own
        return self._apps

    @property
    def own_addresses(self) -> frozenset[Any]:
        """The addresses of the providers' own listeners, as ASGI's scope["server"] gives them."""
        return frozenset(listener.address for listener in self._listeners)

    def wrap(self, app: ASGIApp) -> ProxyRouter:
        return ProxyRouter(app, self, set(self.own_addresses))

    async def __aenter__(self) -> Proxy:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            await self._pool.__aexit__(exc_type, exc, tb)


class ProxyRouter:
    """ASGI: a provider's own listener (every path) and `/proxy/...` go to the proxy; all else to `app`."""

    def __init__(self, app: ASGIApp, proxy: Proxy, own_addresses: set[Any]) -> None:
        self._app = app
        self._proxy = proxy
        self._own = own_addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # By the address the request came in on: there, /token/... is the provider's path, not tokend's.
            if self._own and (address := scope.get("server")) in self._own:
                await self._proxy.apps()[1][address](scope, receive, send)
                return
            if scope["path"].startswith("/proxy/"):
                await self._proxy.apps()[0](scope, receive, send)
                return
        await self._app(scope, receive, send)
