"""The one place a login happens.

The manager decides when to log in and calls a `Login` with a `LoginCall` saying who, with which settings
and why (a first login, a renewal, a forced refresh naming the token the upstream rejected, a stale token).
`DirectLogin` is the plain one: the provider's own login, bounded by its timeout. A wrapper that is itself
a Login (fleet mode's shared cache) can take it as its inner login, so that every login passes one spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tokend.credential import Credential
from tokend.errors import UnknownProvider, UpstreamError
from tokend.providers import ProviderConfig, build_provider
from tokend.providers.base import Chained, Continuing, Provider, Tokens
from tokend.redact import Redactor

__all__ = ["DirectLogin", "Login", "LoginCall", "LoginReason", "fetch_within_timeout", "login_once"]

LOGINS_PER_HOST = 32  # logins in flight to one upstream host at once; see DirectLogin._gate


class LoginReason(enum.StrEnum):
    FIRST = "first"  # the first login after start, or after a provider was added or changed
    RENEWAL = "renewal"  # the scheduled renewal, or a retry after a failure
    FORCED = "forced"  # POST /token/NAME/refresh
    STALE = "stale"  # a GET found the token stale and no login in flight


@dataclass(frozen=True)
class LoginCall:
    name: str  # the provider's name in the config
    config: ProviderConfig
    reason: LoginReason
    rejected: str | None = None  # the token a forced refresh named as rejected upstream
    current: Credential | None = None  # the credential held now, if any
    tokens: Tokens | None = None  # other providers' tokens, for a login that builds on one (Chained)


Login = Callable[[LoginCall], Awaitable[Credential]]


class DirectLogin:
    """Logs in with the provider's own login. Provider objects are built here and nowhere else."""

    def __init__(self, client: httpx.AsyncClient, redactor: Redactor) -> None:
        self._client = client
        self._redactor = redactor
        self._providers: dict[str, tuple[ProviderConfig, Provider]] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}

    async def __call__(self, call: LoginCall) -> Credential:
        provider = self._provider(call.name, call.config)
        async with self._gate(call.config):  # queued here, before the login's own clock starts
            return await fetch_within_timeout(provider, call.config.timeout, self._client, call.current, call.tokens)

    def _provider(self, name: str, config: ProviderConfig) -> Provider:
        known = self._providers.get(name)
        if known is None or known[0] is not config:  # new settings (a reload, a rotation): a new provider
            known = self._providers[name] = (config, build_provider(name, config, self._redactor))
        return known[1]

    def _gate(self, config: ProviderConfig) -> contextlib.AbstractAsyncContextManager[Any]:
        """At most LOGINS_PER_HOST logins at once to one upstream host. A thousand logins started together
        would otherwise queue inside the HTTP client's pool, whose bookkeeping grows with the queue times
        the connections, and time out there; per host, so that one slow upstream holds up only its own."""
        if config.url is None:
            return contextlib.nullcontext()  # a static key: no upstream to spare
        host = urlsplit(config.url).netloc
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = asyncio.Semaphore(LOGINS_PER_HOST)
        return gate


async def fetch_within_timeout(
    provider: Provider, timeout: float, client: httpx.AsyncClient, current: Credential | None = None,
    tokens: Tokens | None = None,
) -> Credential:
    """One login, bounded as a whole by the provider's `timeout` (httpx's own bound each step only)."""
    try:
        async with asyncio.timeout(timeout):
            if isinstance(provider, Chained):
                return await provider.fetch_chained(client, tokens)
            if isinstance(provider, Continuing):
                return await provider.fetch_from(client, current)
            return await provider.fetch(client)
    except TimeoutError:
        raise UpstreamError(provider.name, f"login timed out after {timeout:g}s") from None


async def login_once(name: str, settings: Any) -> Credential:
    """One real login as provider `name`, outside any daemon: for `tokend check --login`. It goes out
    the way the daemon's do: the same trust store (`ca_bundle`) and proxies."""
    from tokend.providers.upstream import build_client

    config = settings.providers[name]
    redactor = Redactor(secret.get() for each in settings.providers.values() for secret in each.secrets().values())
    async with build_client(settings.upstream.ca_bundle) as client:
        login = DirectLogin(client, redactor)
        return await login(LoginCall(name, config, LoginReason.FIRST, tokens=_EachOnce(login, settings.providers)))


class _EachOnce:
    """Other providers' tokens outside a daemon: each source logged in once, as `tokend check --login` does."""

    def __init__(self, login: DirectLogin, providers: Any) -> None:
        self._login, self._providers = login, providers
        self._held: dict[str, Credential] = {}

    async def get(self, name: str) -> Credential:
        if name not in self._providers:
            raise UnknownProvider(name)
        if name not in self._held:
            call = LoginCall(name, self._providers[name], LoginReason.FIRST, tokens=self)
            self._held[name] = await self._login(call)
        return self._held[name]
