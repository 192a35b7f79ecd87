"""Who may read tokens: the request checks applied to every /token and /status request.

A browser on this machine can be made to send requests to 127.0.0.1 (a cross-site form, DNS rebinding),
and a server here can be tricked into fetching a URL of an attacker's choosing (SSRF). Neither can set a
custom header on a simple request, keep a loopback Host through rebinding, or avoid a proxy's
X-Forwarded-For; a browser's own requests carry an Origin. So each is refused by one of the checks below.

Then, when `[clients]` are configured, the caller is identified by its key (`identify`), and may read only
its own providers.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tokend.config import ClientConfig, ServerConfig
from tokend.fields import is_loopback_host

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class Denial:
    status: int
    code: str
    message: str


MISSING_HEADER = Denial(403, "forbidden", "The X-Tokend-Request header is required on this endpoint.")
FOREIGN_HOST = Denial(403, "forbidden", "The Host header must name this machine's loopback address.")
FORWARDED = Denial(403, "forbidden", "Requests relayed by a proxy (X-Forwarded-For, Forwarded) are refused.")
REMOTE_PEER = Denial(403, "forbidden", "Only processes on this machine may ask for tokens.")
BROWSER = Denial(403, "forbidden", "Requests from web pages (with an Origin header) are refused.")
NO_CLIENT_KEY = Denial(401, "unauthorized", "A client key is required: send Authorization: Bearer <client key>.")
UNKNOWN_CLIENT_KEY = Denial(401, "unauthorized", "The client key is not known.")
NOT_YOURS = Denial(403, "forbidden", "This client key may not read that provider.")
NOT_ADMIN = Denial(403, "forbidden", "This client key may not administer that provider.")


@dataclass(frozen=True)
class Caller:
    """Who is asking: a configured client, or anyone at all when no clients are configured."""

    name: str | None
    providers: frozenset[str] | None  # None: every provider
    admin: bool

    def may_read(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def may_administer(self, provider: str | None = None) -> bool:
        """Provider admin endpoints (for `provider`), or the daemon itself (reload) when it is None."""
        return self.admin and (provider is None or self.may_read(provider))


ANYONE = Caller(None, None, admin=True)


class RequestGuard:
    def __init__(self, server: ServerConfig) -> None:
        # On a unix socket the file mode decides who connects, and there is no meaningful Host or peer.
        on_socket = server.socket is not None
        self._hosts: frozenset[str] | None = None if on_socket else (
            frozenset(h.lower() for h in server.allowed_hosts) if server.allow_remote else LOOPBACK_HOSTS
        )
        self._check_peer = not on_socket and not server.allow_remote
        self._clients: Mapping[str, ClientConfig] = {}
        self._keys: list[tuple[bytes, Caller]] = []

    def check(self, scope: Any) -> Denial | None:
        """The reason to refuse this ASGI request, or None to let it through."""
        marked = hosted = False
        for name, value in scope["headers"]:
            if name == b"x-tokend-request":
                marked = bool(value.strip())
            elif name == b"host":
                if self._hosts is not None and _hostname(value) not in self._hosts:
                    return FOREIGN_HOST
                hosted = True
            elif name in (b"x-forwarded-for", b"forwarded"):
                return FORWARDED
            elif name == b"origin":
                return BROWSER
        if not marked:
            return MISSING_HEADER
        if self._hosts is not None and not hosted:
            return FOREIGN_HOST
        if self._check_peer:
            client = scope.get("client")
            if not client or not _loopback_peer(client[0]):
                return REMOTE_PEER
        return None


    def identify(self, scope: Any, clients: Mapping[str, ClientConfig]) -> Caller | Denial:
        """The caller by its client key, or why it is refused. Anyone, when no clients are configured."""
        if not clients:
            return ANYONE
        presented = _bearer(scope)
        if presented is None:
            return NO_CLIENT_KEY
        found: Caller | None = None
        for key, caller in self._keys_of(clients):
            # Every key is compared, in constant time, so that the timing tells nothing about any of them.
            if hmac.compare_digest(presented, key):
                found = caller
        return found or UNKNOWN_CLIENT_KEY

    def _keys_of(self, clients: Mapping[str, ClientConfig]) -> list[tuple[bytes, Caller]]:
        if clients is not self._clients:  # a reload brought new clients
            self._keys = [
                (client.key.get().encode(), Caller(name, frozenset(client.providers), client.admin))
                for name, client in clients.items()
            ]
            self._clients = clients
        return self._keys


def _bearer(scope: Any) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.partition(b" ")
            return key.strip() if scheme.lower() == b"bearer" and key.strip() else None
    return None


@lru_cache(maxsize=64)  # the hot path sees the same few Host values over and over
def _hostname(value: bytes) -> str:
    """The host part of a Host header: `127.0.0.1:8765` -> `127.0.0.1`, `[::1]:8765` -> `[::1]`."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


@lru_cache(maxsize=64)
def _loopback_peer(address: str) -> bool:
    return is_loopback_host(address.removeprefix("::ffff:"))
