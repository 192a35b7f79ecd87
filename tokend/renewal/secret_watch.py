"""Secret files watched for changes, so that a key replaced on disk is used without a restart.

A Flotiq key regenerated after a leak, a Felloh key pair rotated by another tool, a Kubernetes Secret
updated in place: each shows up as a changed `{ file }` or `{ credential }` file. The files are polled
(a stat each, every few seconds) rather than watched with inotify: polling works the same on every
filesystem, bind mounts and Kubernetes' symlink swaps included, and costs next to nothing.

A changed file is read in a thread, never on the event loop (a FIFO or a slow disk would hold up every
request), and the provider's settings are validated with it as a start would validate them (the key loads,
is strong enough) before it replaces the running one: until then the running key and its token stay, and
/status shows the file refused and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from tokend.config.secrets import SecretValue, reread_secret_files
from tokend.config.tables import ClientConfig
from tokend.providers import ProviderConfig
from tokend.renewal.manager import Manager
from tokend.renewal.scheduler import Scheduler

log = logging.getLogger("tokend")

WATCH_INTERVAL = 2.0  # seconds between two looks at the files: "within a few seconds" of a change

# What tells a changed file: a rename over it (inode), a rewrite in place (mtime, size), or a missing file.
_Fingerprint = tuple[int, int, int, int] | None


class SecretFileWatcher:
    def __init__(self, manager: Manager, scheduler: Scheduler) -> None:
        self._manager = manager
        self._scheduler = scheduler
        self._seen: dict[Path, _Fingerprint] = {}
        # Each provider's secret files, worked out once per config object: with a thousand providers,
        # walking every config every few seconds would cost more than the stat calls themselves.
        self._paths: dict[str, tuple[ProviderConfig, list[Path]]] = {}
        self._client_keys = ClientKeyWatcher(manager)

    def start(self) -> None:
        """Note every secret file as it is now, then look again every WATCH_INTERVAL seconds."""
        for name in self._manager.names:
            self._changed_files(name)
        self._client_keys.note()
        self._scheduler.every(WATCH_INTERVAL, self.check, "tokend-watch-secret-files")

    async def check(self) -> None:
        await self._client_keys.check()
        names = self._manager.names
        for gone in self._paths.keys() - set(names):  # removed by a reload
            del self._paths[gone]
        for name in names:
            if changed := self._changed_files(name):
                await self._use_new_secrets(name, changed)

    def _changed_files(self, name: str) -> list[Path]:
        changed = []
        for path in self._secret_files(name):
            fingerprint = _fingerprint(path)
            if path in self._seen and self._seen[path] != fingerprint:
                changed.append(path)
            self._seen[path] = fingerprint
        return changed

    def _secret_files(self, name: str) -> list[Path]:
        config = self._manager.provider_config(name)
        known = self._paths.get(name)
        if known is None or known[0] is not config:
            paths = [secret.path for secret in config.secrets().values() if secret.path is not None]
            known = self._paths[name] = (config, paths)
        return known[1]

    async def _use_new_secrets(self, name: str, changed: list[Path]) -> None:
        # Under the provider's change lock: a key rotation writes the files before it switches the
        # provider, and must not be overtaken here between the two.
        async with self._manager.changing(name):
            if name not in self._manager.names:
                return
            config = self._manager.provider_config(name)
            try:
                new = await asyncio.to_thread(_validated_anew, config)
            except ValueError as exc:
                why = f"{', '.join(str(path) for path in changed)} changed but was not taken: {_reason(exc)}"
                if self._manager.secret_refused(name) != why:
                    log.error("provider=%s a secret file changed but cannot be used (%s); keeping the running key",
                              name, why)
                self._manager.refuse_secret(name, why)
                return
            self._manager.refuse_secret(name, None)
            if new == config:
                return  # rewritten with the same content, or already in use (a rotation by tokend itself)
            log.info("provider=%s secret file changed (%s); logging in again with it",
                     name, ", ".join(str(path) for path in changed))
            self._manager.replace_provider(name, new)


def _validated_anew(config: ProviderConfig) -> ProviderConfig:
    """`config` with its secret files read again, once its settings validate with them as a start would
    validate them (a key that loads, of a strength the kind takes); ValueError otherwise. Blocking."""
    new = reread_secret_files(config)
    type(new).model_validate({field: getattr(new, field) for field in type(new).model_fields})
    return new


def _fingerprint(path: Path) -> _Fingerprint:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size


class ClientKeyWatcher:
    """Client key files: a key rewritten on disk replaces the old one at once, so that rotating a leaked key
    revokes it without a reload. A key file that can no longer be used locks its client out (a key nobody
    knows) rather than leave the old key working, and never opens the API to callers without a key."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._seen: dict[Path, _Fingerprint] = {}
        self._clients: Mapping[str, ClientConfig] | None = None  # the clients whose files are in _seen

    def note(self) -> None:
        """The files as they are now belong to the running clients (at start)."""
        self._clients, self._seen, _ = self._look()

    async def check(self) -> None:
        clients, seen, changed = self._look()
        if clients is self._clients and changed:
            new = await asyncio.to_thread(_reread_clients, clients, changed)  # never a read on the event loop
            if self._manager.settings.clients is clients:  # not replaced by a reload meanwhile
                # Swapped whole, as a reload does: the request guard sees new clients and builds their keys anew.
                self._manager.settings = self._manager.settings.model_copy(update={"clients": new})
            clients = self._manager.settings.clients
        # First look, a reload, or a change: the files as they are now belong to these clients.
        self._clients, self._seen = clients, seen

    def _look(self) -> tuple[Mapping[str, ClientConfig], dict[Path, _Fingerprint], list[str]]:
        clients: Mapping[str, ClientConfig] = self._manager.settings.clients
        files = {name: client.key.path for name, client in clients.items()
                 if client.key is not None and client.key.path is not None}
        # Taken before any file is read: a change made while it is read is seen the next time.
        seen = {path: _fingerprint(path) for path in files.values()}
        return clients, seen, [name for name, path in files.items() if seen[path] != self._seen.get(path)]


def _reread_clients(clients: Mapping[str, ClientConfig], changed: list[str]) -> dict[str, ClientConfig]:
    new = dict(clients)
    for name in changed:
        new[name] = _reread_client(name, clients[name], others=[c for n, c in new.items() if n != name])
    return new


def _reread_client(name: str, client: ClientConfig, others: list[ClientConfig]) -> ClientConfig:
    assert client.key is not None  # only clients with a key file are watched
    path = client.key.path
    try:
        fresh = reread_secret_files(client)
        # Validated as the config's own are: the same length check, and a key no other client has.
        fresh = ClientConfig.model_validate({field: getattr(fresh, field) for field in ClientConfig.model_fields})
        if any(other.key is not None and fresh.key is not None and other.key.get() == fresh.key.get()
               for other in others):
            raise ValueError("the same key as another client")
    except ValueError as exc:
        log.error("client=%s key file %s changed but cannot be used (%s); the client is locked out until it can",
                  name, path, _reason(exc))
        locked = SecretValue(SecretStr(secrets.token_urlsafe(32)), f"file {path}", path)
        return client.model_copy(update={"key": locked})
    log.info("client=%s key file %s changed; the old key is refused from now on", name, path)
    return fresh


def _reason(exc: ValueError) -> str:
    # A pydantic error lists each problem after a header line; its messages never hold the value
    # (secret references are resolved and checked without echoing them).
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(" ".join([*map(str, error["loc"][:1]), str(error["msg"]).removeprefix("Value error, ")])
                         for error in errors(include_input=False))
    return str(exc)
