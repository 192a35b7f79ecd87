"""Every listening socket tokend opens: the API's, the proxy's own and the metadata endpoints'. Made here, not
by uvicorn, so that a busy port is a clear error before anything starts, a unix socket gets its file mode
before it accepts anyone, and `port = 0` can be used by tests.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tokend.config.accounts import group_id
from tokend.config.tables import ServerConfig
from tokend.errors import TokendError

__all__ = ["IN_USE", "SOCKET_MODE", "listen", "listen_each", "listen_tcp", "unlink_at_exit"]

log = logging.getLogger("tokend")

SOCKET_MODE = 0o600
T = TypeVar("T")


# What a port in use most likely means for the daemon's own [server] port, and what to do about it.
IN_USE = "address already in use: is tokend already running? `tokend status`, or change `[server] port`"


def listen(server: ServerConfig, *, in_use: str = "address already in use") -> socket.socket:
    """The listening socket the config asks for, or TokendError saying why it cannot be had."""
    if server.socket is not None:
        return _listen_unix(server.socket, server.socket_mode, server.socket_group)
    return listen_tcp(server.host, server.port, in_use=in_use)


def listen_each(wanted: Iterable[tuple[T, ServerConfig]]) -> list[tuple[T, socket.socket]]:
    """A listening socket for each (tag, address); TokendError, with all those opened closed, if one fails."""
    opened: list[tuple[T, socket.socket]] = []
    try:
        for tag, server in wanted:
            opened.append((tag, listen(server)))
    except BaseException:
        for _, sock in opened:
            sock.close()
        raise
    return opened


def listen_tcp(host: str, port: int, *, in_use: str = "address already in use") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without
    # it every keep-alive answer waits ~40 ms for Nagle's algorithm.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = in_use if exc.errno == errno.EADDRINUSE else exc.strerror
        raise TokendError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def _listen_unix(path: Path, mode: int = SOCKET_MODE, group: str | None = None) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the file is born 0600: no window in which others may connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise TokendError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        if group is not None:
            os.chown(path, -1, _group_id_or_refuse(group))  # before the mode opens it to the group: the right group
        os.chmod(path, mode)
    except (OSError, TokendError) as exc:
        sock.close()
        path.unlink()
        reason = exc.message if isinstance(exc, TokendError) else exc.strerror
        raise TokendError(f"cannot give {path} group {group} and mode {mode:#o}: {reason}") from None
    sock.listen(128)
    return sock


def _group_id_or_refuse(group: str) -> int:
    try:
        return group_id(group)
    except LookupError as exc:
        raise TokendError(str(exc)) from None


def _remove_stale_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise TokendError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # left behind by a daemon that did not exit cleanly
            log.info("stale_socket_removed path=%s", path)
        else:
            raise TokendError(f"another process is already serving on {path}")
        finally:
            probe.close()


@contextlib.contextmanager
def unlink_at_exit(server: ServerConfig) -> Iterator[None]:
    try:
        yield
    finally:
        if server.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                server.socket.unlink()
