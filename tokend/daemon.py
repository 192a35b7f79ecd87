"""The composition root: builds tokend's parts from the settings, starts them in order and stops them in
reverse. Everything else is handed what it needs; no part builds another.

    upstream client -> scheduler -> fleet (with [fleet]) -> state folder (with [state]) -> manager (kept
    credentials restored, other first logins start) -> file sinks
    -> proxy -> secret-file watcher -> extensions -> reloader (SIGHUP) -> systemd notifications -> frozen heap

The metadata endpoints (tokend.outputs) have no lifecycle of their own: they only answer requests.

`serve()` opens every listening socket (tokend.api.sockets), builds the Daemon, the local API around it
(tokend.api.routes) and the HTTP server (tokend.api.server), and runs them until a stop signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from tokend.api.connections import Budget
from tokend.api.guard import RequestGuard
from tokend.api.routes import create_app
from tokend.api.server import http_server, stop_signals_end_cleanly
from tokend.api.sockets import IN_USE, listen, unlink_at_exit
from tokend.config.audit import audit, log_findings
from tokend.config.settings import Settings
from tokend.extensions import DaemonParts, Extension
from tokend.logs import install_redaction
from tokend.outputs.metadata import Metadata, MetadataListener, closed_at_exit, open_metadata_listeners
from tokend.outputs.proxy.listen import Listener, open_listeners, removed_at_exit
from tokend.outputs.proxy.router import Proxy
from tokend.outputs.sinks import SinkWriter
from tokend.providers import EXTENSIONS, import_logins
from tokend.providers.upstream import build_client, trust_store
from tokend.redact import Redactor
from tokend.renewal.logins import DirectLogin, Login
from tokend.renewal.manager import Manager
from tokend.renewal.reloading import Reloader
from tokend.renewal.scheduler import Scheduler
from tokend.renewal.secret_watch import SecretFileWatcher
from tokend.sdnotify import Notifier, StatusLine, describe

if TYPE_CHECKING:
    from tokend.fleet.logins import FleetLogins
    from tokend.state.store import StateStore

__all__ = ["Daemon", "serve"]

log = logging.getLogger("tokend")


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
        self.client = build_client(settings.upstream.ca_bundle, transport)
        self.scheduler = Scheduler()
        # Only the kinds the config names have their login modules imported, at start: a kind's module
        # imported later, among the daemon's first logins, costs more memory than the same import here.
        import_logins(settings.providers.values())
        self.state: StateStore | None = None
        if settings.state is not None:  # only then are its store and its sealing imported
            from tokend.state.store import StateStore

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
        self.extensions: list[Extension] = [_extension(named)(parts) for named in EXTENSIONS]
        self.sinks = SinkWriter(self.manager)
        # The auth-injecting proxy: /proxy/{name}/... on the API, and the providers' own listeners (opened by
        # serve(), which owns sockets). Its upstream pool is made on the first proxied request.
        manager = self.manager
        # One budget of file descriptors for the clients' connections and the proxy's upstream ones.
        self.budget = Budget.from_limit()
        self.proxy = Proxy(manager, RequestGuard(settings.server), clients=lambda: manager.settings.clients,
                           listeners=proxy_listeners, tls=lambda: trust_store(manager.settings.upstream.ca_bundle),
                           budget=self.budget)
        # Cloud SDKs' metadata endpoints, on their own listeners (opened by serve() like the proxy's).
        self.metadata = Metadata(self.manager, self.client, self.redactor, metadata_listeners)
        self.redactor.add_secrets([self.metadata.identity_header, self.metadata.aws_token])
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


def serve(settings: Settings, sock: socket.socket | None = None, *, config_path: Path | None = None) -> bool:
    """Run until SIGTERM or SIGINT. False when the daemon could not start.

    With `config_path` (the file `settings` came from), SIGHUP and POST /reload read it again.
    """
    with contextlib.ExitStack() as opened:
        # Each socket is closed (a unix socket's file removed) on the way out, whether the start fails
        # half-way or the daemon stops; the API's own first, so that a busy port is the first error.
        sock = opened.enter_context(sock or listen(settings.server, in_use=IN_USE))
        opened.enter_context(unlink_at_exit(settings.server))
        proxy_listeners = open_listeners(settings)  # the providers' own proxy listeners, if any
        opened.enter_context(removed_at_exit(proxy_listeners))
        metadata_listeners = open_metadata_listeners(settings.metadata)
        opened.enter_context(closed_at_exit(metadata_listeners))
        where = _address(settings, sock)
        # A bad proxy variable or trust store stops it here, before anything is served.
        daemon = Daemon(settings, config_path=config_path, notifier=Notifier.from_environment(), where=where,
                        proxy_listeners=proxy_listeners, metadata_listeners=metadata_listeners)
        install_redaction(daemon.redactor)
        streamed = frozenset(listener.sock.getsockname() for listener in proxy_listeners)
        # A request waiting for a login that spends a refresh token is given that login's time at a stop.
        longest = max((provider.timeout for provider in settings.providers.values()
                       if provider.SPENDS_REFRESH_TOKENS), default=0.0)
        server = http_server(create_app(daemon), daemon.budget, streamed, longest)
        _log_start(settings, where, proxy_listeners, config_path)

        async def run() -> None:
            async with daemon:
                await server.serve(sockets=[sock, *(listener.sock for listener in proxy_listeners),
                                            *(listener.sock for listener in metadata_listeners)])

        opened.enter_context(stop_signals_end_cleanly())
        # uvloop where uvicorn would use it.
        runner = opened.enter_context(asyncio.Runner(loop_factory=server.config.get_loop_factory()))
        runner.run(run())
    return server.started


def _address(settings: Settings, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return str(settings.server.socket or (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"))


def _log_start(settings: Settings, where: str, proxy_listeners: Sequence[Listener], config_path: Path | None) -> None:
    log.info("serving providers=%d where=%s", len(settings.providers), where)
    for listener in proxy_listeners:
        log.info("proxy provider=%s where=%s", listener.provider, listener.where)
    for protocol, address in settings.metadata.listening().items():
        log.info("metadata endpoint=%s where=%s", protocol, address)
    log_findings(audit(settings, config_path))


def _extension(named: str) -> Callable[[DaemonParts], Extension]:
    """An extension class, from its "module:Class" name (tokend.providers.EXTENSIONS)."""
    module, _, attribute = named.partition(":")
    found: Callable[[DaemonParts], Extension] = getattr(importlib.import_module(module), attribute)
    return found


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
