"""Who may read tokens: the request checks of SPEC.md, applied to every /token and /status request.

A browser on this machine can be made to send requests to 127.0.0.1 (a cross-site form, DNS rebinding),
and a server here can be tricked into fetching a URL of an attacker's choosing (SSRF). Neither can set a
custom header on a simple request, keep a loopback Host through rebinding, or avoid a proxy's
X-Forwarded-For; so each is refused by one of the checks below.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tokend.config import ServerConfig, is_loopback_host

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


class RequestGuard:
    def __init__(self, server: ServerConfig) -> None:
        # On a unix socket the file mode decides who connects, and there is no meaningful Host or peer.
        on_socket = server.socket is not None
        self._hosts: frozenset[str] | None = None if on_socket else (
            frozenset(h.lower() for h in server.allowed_hosts) if server.allow_remote else LOOPBACK_HOSTS
        )
        self._check_peer = not on_socket and not server.allow_remote

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
        if not marked:
            return MISSING_HEADER
        if self._hosts is not None and not hosted:
            return FOREIGN_HOST
        if self._check_peer:
            client = scope.get("client")
            if not client or not _loopback_peer(client[0]):
                return REMOTE_PEER
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
