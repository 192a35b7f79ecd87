"""The one place a login happens.

The manager decides when to log in and calls a `Login` with a `LoginCall` saying who, with which settings
and why (a first login, a renewal, a forced refresh naming the token the upstream rejected, a stale token).
`DirectLogin` is the plain one: the provider's own login, bounded by its timeout. A wrapper that is itself
a Login (fleet mode's shared cache) can take it as its inner login, so that every login passes one spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from tokend.credential import Credential
from tokend.errors import UnknownProvider, UpstreamError
from tokend.providers import ProviderConfig, build_provider
from tokend.providers.base import Chained, Continuing, Provider, Tokens
from tokend.redact import Redactor

__all__ = ["DirectLogin", "Ledger", "Login", "LoginCall", "LoginReason", "MemoryLedger", "Spending", "cancelled_by_us",
           "fetch_within_timeout", "login_once", "retrieve_failure"]

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


@runtime_checkable
class Spending(Protocol):
    """A login that spends a refresh token a rotating server accepts once (a user token)."""

    def spends(self, current: Credential | None) -> str | None: ...

    def spent(self, why: str) -> UpstreamError: ...


class Ledger(Protocol):
    """Where the refresh tokens sent are noted, by keyed digest, before they are sent: a token noted there is
    never sent again unless the server has since shown that it keeps it (it answered without a new one).

    `spend` notes one durably and returns, or raises OSError: then the token is sent only if `forget_holder`
    (removing what holds it, which needs no space) makes sure that nothing could send it again after a
    restart. `generation` is the generation of the credential holding it (None: the configured one)."""

    def spent(self, name: str, token: str, generation: int | None) -> str | None: ...

    def spend(self, name: str, token: str, generation: int | None) -> None: ...

    def keep(self, name: str, token: str) -> None: ...

    def forget_holder(self, name: str, configured: bool) -> bool: ...

    def highest(self, name: str) -> int:
        """The highest generation noted: a new sign-in starts above it."""
        ...


class MemoryLedger:
    """The ledger of a daemon without a state folder: what it sent in this run, under a key of this run."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._spent: dict[str, set[str]] = {}
        self._kept: dict[str, set[str]] = {}
        self._generations: dict[str, int] = {}

    def digest(self, name: str, token: str) -> str:
        return hmac.new(self._key, f"{name}\0{token}".encode(), hashlib.sha256).hexdigest()[:32]

    def spent(self, name: str, token: str, generation: int | None) -> str | None:
        digest = self.digest(name, token)
        if digest in self._spent.get(name, ()) and digest not in self._kept.get(name, ()):
            return "it was sent before"
        if generation is not None and generation < self._generations.get(name, 0):
            return f"it comes from generation {generation}, older than one already spent"
        return None

    def spend(self, name: str, token: str, generation: int | None) -> None:
        self._spent.setdefault(name, set()).add(self.digest(name, token))
        if generation is not None:
            self._generations[name] = max(self._generations.get(name, 0), generation)

    def keep(self, name: str, token: str) -> None:
        self._kept.setdefault(name, set()).add(self.digest(name, token))

    def forget_holder(self, name: str, configured: bool) -> bool:
        return True

    def highest(self, name: str) -> int:
        return self._generations.get(name, 0)


class DirectLogin:
    """Logs in with the provider's own login. Provider objects are built here and nowhere else."""

    def __init__(self, client: httpx.AsyncClient, redactor: Redactor, ledger: Ledger | None = None) -> None:
        self._client = client
        self._redactor = redactor
        self.ledger: Ledger = ledger or MemoryLedger()
        self._providers: dict[str, tuple[ProviderConfig, Provider]] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}

    async def __call__(self, call: LoginCall) -> Credential:
        provider = self._provider(call.name, call.config)
        async with self._gate(call.config):  # queued here, before the login's own clock starts
            sent = self._note_spending(call, provider) if isinstance(provider, Spending) else None
            credential = await fetch_within_timeout(provider, call.config.timeout, self._client, call.current,
                                                    call.tokens)
            if sent is not None and credential.refresh_token == sent:
                self.ledger.keep(call.name, sent)  # the server keeps it: sending it again is no reuse
            elif sent is not None and (call.current is None or call.current.refresh_token != sent):
                # From the configured one: a new line of rotations, above every generation already spent.
                credential = dataclasses.replace(
                    credential, generation=max(credential.generation, self.ledger.highest(call.name) + 1))
            return credential

    def _note_spending(self, call: LoginCall, provider: Spending) -> str | None:
        """Note the refresh token about to be sent in the ledger, or refuse to send one already noted there
        (or one that could be sent again after a restart because nothing could be noted)."""
        token = provider.spends(call.current)
        if token is None:
            return None
        held = call.current is not None and call.current.refresh_token == token
        generation = call.current.generation if held and call.current is not None else None
        if (why := self.ledger.spent(call.name, token, generation)) is not None:
            raise provider.spent(why)
        try:
            self.ledger.spend(call.name, token, generation)
        except OSError as exc:
            if not self.ledger.forget_holder(call.name, not held):
                raise UpstreamError(call.name, f"the state folder cannot note the refresh token about to be sent "
                                    f"({exc.strerror}); it is not sent until it can", retryable=True) from None
        return token

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


def cancelled_by_us() -> bool:
    """True when the running task itself is being cancelled (shutdown, a client gone), not what it awaits."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def retrieve_failure(task: asyncio.Task[Credential]) -> None:
    # A login nobody awaits (the first one, a scheduled one) has already logged its failure.
    if not task.cancelled():
        task.exception()
