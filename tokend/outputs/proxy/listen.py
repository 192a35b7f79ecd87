"""A provider's own proxy listener (`proxy_listen`), for SDKs whose base URL cannot carry a path.

Each is a loopback TCP port or a unix socket (mode 0600, like the daemon's own), served by the same server
as the local API: the app tells them apart by the address a request came in on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokend.api.sockets import listen_each
from tokend.config.settings import Settings
from tokend.config.tables import ServerConfig

__all__ = ["Listener", "open_listeners"]


@dataclass(frozen=True)
class Listener:
    provider: str
    sock: socket.socket
    server: ServerConfig  # what its request checks are built from (a unix socket has no Host to check)

    @property
    def address(self) -> tuple[str, int | None]:
        """The listener's address as an ASGI scope's "server" shows it."""
        name = self.sock.getsockname()
        return (name, None) if isinstance(name, str) else (str(name[0]), int(name[1]))

    @property
    def where(self) -> str:
        host, port = self.address
        return host if port is None else f"http://{host}:{port}"


def open_listeners(settings: Settings) -> list[Listener]:
    """A listening socket for every provider with proxy_listen; TokendError (all closed) if one fails."""

    wanted = [((name, server), server) for name, config in settings.providers.items()
              if config.proxy and config.proxy_listen is not None
              for server in (_server_config(config.proxy_listen),)]
    return [Listener(name, sock, server) for (name, server), sock in listen_each(wanted)]


@contextlib.contextmanager
def removed_at_exit(listeners: list[Listener]) -> Iterator[None]:
    """Close the sockets, and remove the unix socket files, when the daemon stops."""
    try:
        yield
    finally:
        for listener in listeners:
            listener.sock.close()
            if listener.server.socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    listener.server.socket.unlink()


def _server_config(listen: str) -> ServerConfig:
    if listen.startswith("/"):
        return ServerConfig(socket=Path(listen))
    host, _, port = listen.rpartition(":")
    return ServerConfig(host=host.strip("[]"), port=int(port))
