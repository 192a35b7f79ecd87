"""The composition root: builds tokend's parts from the settings, starts them in order and stops them in
reverse. Everything else is handed what it needs; no part builds another.

    upstream client -> scheduler -> fleet (with [fleet]) -> state folder (with [state]) -> manager (kept
    credentials restored, other first logins start) -> file sinks
    -> proxy -> secret-file watcher -> extensions -> reloader (SIGHUP) -> systemd notifications -> frozen heap

The metadata endpoints (tokend.outputs) have no lifecycle of their own: they only answer requests.

The local API (tokend.api) and the listener (tokend.server) are built around a Daemon, not inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from tokend.config import Settings
from tokend.connections import Budget
from tokend.extensions import DaemonParts, Extension
from tokend.guard import RequestGuard
from tokend.logins import DirectLogin, Login
from tokend.manager import Manager
from tokend.outputs.metadata import Metadata, MetadataListener
from tokend.outputs.proxy.listen import Listener
from tokend.outputs.proxy.router import Proxy
from tokend.outputs.sinks import SinkWriter
from tokend.providers import KINDS
from tokend.redact import Redactor
from tokend.reloading import Reloader
from tokend.scheduler import Scheduler
from tokend.sdnotify import Notifier, StatusLine, describe
from tokend.state.store import StateStore
from tokend.upstream import build_client, trust_store
from tokend.watch import SecretFileWatcher

if TYPE_CHECKING:
    from tokend.fleet.logins import FleetLogins

__all__ = ["Daemon"]


class Daemon:
    """Use as `async with Daemon(settings) as daemon:`; every first login starts on entry.

    `config_path`: the file `settings` came from (SIGHUP and POST /reload read it again); `notifier`:
    systemd's sd_notify socket (READY, STATUS, WATCHDOG); `where`: the address served, for the status line.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        notifier: Notifier | None = None,
        where: str = "",
        proxy_listeners: Sequence[Listener] = (),
        metadata_listeners: Sequence[MetadataListener] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = Redactor(
            secret.get() for config in settings.providers.values() for secret in config.secrets().values()
        )
        # Built here, not on entry: a bad proxy variable or trust store is then a ConfigError raised before
        # anything listens. Nothing connects until the first login.
        self.client = build_client(settings, transport)
        self.scheduler = Scheduler()
        self.state: StateStore | None = None
        if settings.state is not None:
            self.redactor.add_secrets(secret.get() for secret in settings.state.secrets())
            self.state = StateStore(settings.state)
        # The refresh tokens sent are noted before they are sent: in the state folder, else for this run only.
        self.direct_login = DirectLogin(self.client, self.redactor, self.state)
        self.login: Login = self.direct_login
        self.fleet: FleetLogins | None = None
        if settings.fleet is not None:  # only then is a Redis library imported
            from tokend.fleet.logins import FleetLogins

            self.redactor.add_secrets(secret.get() for secret in settings.fleet.secrets())
            self.login = self.fleet = FleetLogins(self.direct_login, settings.fleet)
        self.manager = Manager(
            settings, login=self.login, scheduler=self.scheduler, redactor=self.redactor, rng=rng,
            restore=None if self.state is None else self.state.restore,
        )
        if self.state is not None:
            self.state.follow(self.manager)
        parts = DaemonParts(self.manager, self.scheduler, self.client, self.redactor, self.direct_login,
                            fleet=self.fleet is not None, ledger=self.direct_login.ledger)
        self.extensions: list[Extension] = [kind.extension(parts) for kind in KINDS if kind.extension is not None]
        self.sinks = SinkWriter(self.manager)
        # The auth-injecting proxy: /proxy/{name}/... on the API, and the providers' own listeners (opened by
        # tokend.server, which owns sockets). Its upstream pool is made on the first proxied request.
        manager = self.manager
        # One budget of file descriptors for the clients' connections and the proxy's upstream ones.
        self.budget = Budget.from_limit()
        self.proxy = Proxy(manager, RequestGuard(settings.server), clients=lambda: manager.settings.clients,
                           listeners=proxy_listeners, tls=lambda: trust_store(manager.settings.upstream.ca_bundle),
                           budget=self.budget)
        # Cloud SDKs' metadata endpoints, on their own listeners (opened by tokend.server like the proxy's).
        self.metadata = Metadata(self.manager, self.client, self.redactor, metadata_listeners)
        self.redactor.add_secrets([self.metadata.identity_header])
        self.watcher = SecretFileWatcher(self.manager, self.scheduler)
        self.reloader = (
            None if config_path is None
            else Reloader(self.manager, config_path, then=[extension.reloaded for extension in self.extensions])
        )
        self._notifier = notifier
        self.where = where
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Daemon:
        stack = self._stack
        try:
            stack.push_async_callback(self.client.aclose)  # closed last, once no login can use it
            await stack.enter_async_context(self.scheduler)
            if self.fleet is not None:  # listening to the fleet before the first logins ask it anything
                await stack.enter_async_context(self.fleet)
            if self.state is not None:  # the folder exists (and is ours) before the first restore reads it
                self.state.open()
                stack.callback(self.state.close)
            await stack.enter_async_context(self.manager)
            await stack.enter_async_context(self.sinks)
            await stack.enter_async_context(self.proxy)
            self.watcher.start()
            for extension in self.extensions:
                await extension.start()
                stack.push_async_callback(extension.stop)
            if self.reloader is not None:
                await stack.enter_async_context(self.reloader)
            if self._notifier is not None and self._notifier.enabled:
                await stack.enter_async_context(_systemd(self.manager, self.scheduler, self._notifier, self.where))
            await stack.enter_async_context(_frozen_heap(self.manager))
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def _systemd(manager: Manager, scheduler: Scheduler, notifier: Notifier, where: str) -> AsyncIterator[None]:
    """sd_notify: READY=1 once every first login has succeeded or failed (one provider down must not hold
    the start until systemd gives up), then STATUS= whenever a provider's state changes (rate-limited),
    WATCHDOG=1 at half WatchdogSec from the event loop itself (so a hung loop stops the pings), STOPPING=1
    at shutdown."""

    line = StatusLine(notifier, lambda: describe(where, {name: manager.state(name).value for name in manager.names}))

    async def ready_when_settled() -> None:
        await manager.settled()
        notifier.ready(line.current())
        # From now on STATUS= follows the providers (recoveries, failures, reloads), checked every second.
        scheduler.every(1.0, line.refresh_async, "tokend-sd-status")

    async def ping() -> None:
        notifier.watchdog()

    ready = asyncio.create_task(ready_when_settled())
    if (interval := notifier.watchdog_interval()) is not None:
        notifier.watchdog()
        scheduler.every(interval / 2, ping, "tokend-sd-watchdog")
    try:
        yield
    finally:
        notifier.stopping()
        ready.cancel()


@contextlib.asynccontextmanager
async def _frozen_heap(manager: Manager) -> AsyncIterator[None]:
    """Once the first logins are done, move everything allocated so far (FastAPI, pydantic, the config)
    out of the garbage collector's sight: its full collections then walk only what requests create,
    which keeps them short on the hot path and with a thousand providers."""

    async def freeze() -> None:
        await manager.settled()
        gc.collect()
        gc.freeze()

    task = asyncio.create_task(freeze())
    try:
        yield
    finally:
        task.cancel()
