"""Serving the daemon: its API under uvicorn, on a loopback TCP port or a unix socket.

The listening socket is made here, not by uvicorn, so that a busy port is a clear error before anything
starts, a unix socket gets its file mode before it accepts anyone, and `port = 0` can be used by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import uvicorn

from tokend.accounts import group_id
from tokend.api import create_app
from tokend.audit import audit, log_findings
from tokend.config import ServerConfig, Settings
from tokend.connections import limited_protocol
from tokend.daemon import Daemon
from tokend.errors import TokendError
from tokend.logs import install_redaction
from tokend.outputs.metadata import closed_at_exit, open_metadata_listeners
from tokend.outputs.proxy.listen import open_listeners, removed_at_exit
from tokend.sdnotify import Notifier

log = logging.getLogger("tokend")

SOCKET_MODE = 0o600
T = TypeVar("T")
GRACEFUL_SHUTDOWN = 3  # seconds for in-flight local requests after SIGTERM


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
            log.info("removed stale socket %s", path)
        else:
            raise TokendError(f"another process is already serving on {path}")
        finally:
            probe.close()


@contextlib.contextmanager
def _unlink_at_exit(server: ServerConfig) -> Iterator[None]:
    try:
        yield
    finally:
        if server.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                server.socket.unlink()


def serve(settings: Settings, sock: socket.socket | None = None, *, config_path: Path | None = None) -> bool:
    """Run until SIGTERM or SIGINT. False when the daemon could not start.

    With `config_path` (the file `settings` came from), SIGHUP and POST /reload read it again.
    """
    sock = sock or listen(settings.server, in_use=IN_USE)
    host, port = sock.getsockname()[:2]
    where = settings.server.socket or (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    try:
        proxy_listeners = open_listeners(settings)  # the providers' own proxy listeners, if any
    except BaseException:
        sock.close()
        raise
    try:
        metadata_listeners = open_metadata_listeners(settings.metadata)
    except BaseException:
        with removed_at_exit(proxy_listeners), sock:
            raise
    try:
        # A bad proxy variable or trust store stops it here, before anything is served.
        daemon = Daemon(settings, config_path=config_path, notifier=Notifier.from_environment(), where=str(where),
                        proxy_listeners=proxy_listeners, metadata_listeners=metadata_listeners)
    except BaseException:
        with removed_at_exit(proxy_listeners), closed_at_exit(metadata_listeners), sock:
            raise
    install_redaction(daemon.redactor)
    streamed = frozenset(listener.sock.getsockname() for listener in proxy_listeners)
    config = uvicorn.Config(
        create_app(daemon),
        # Nothing in front of tokend is trusted to say who the client is: X-Forwarded-For is refused,
        # never believed (uvicorn would otherwise rewrite the peer address from it for 127.0.0.1).
        proxy_headers=False,
        log_config=None,
        access_log=False,
        lifespan="off",  # the daemon's parts are started and stopped around the server, below
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        # A header timeout, a connection cap and header limits, which uvicorn has not on its own.
        http=limited_protocol(daemon.budget, streamed),
    )
    server = uvicorn.Server(config)
    log.info("tokend serving %d provider(s) on %s", len(settings.providers), where)
    for listener in proxy_listeners:
        log.info("proxy for %s on %s", listener.provider, listener.where)
    for protocol, address in settings.metadata.listening().items():
        log.info("metadata endpoint %s on %s", protocol, address)
    log_findings(audit(settings, config_path))

    async def run() -> None:
        async with daemon:
            await server.serve(sockets=[sock, *(listener.sock for listener in proxy_listeners),
                                        *(listener.sock for listener in metadata_listeners)])

    with _unlink_at_exit(settings.server), removed_at_exit(proxy_listeners), closed_at_exit(metadata_listeners), sock, \
            _stop_signals_end_cleanly(), \
            asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop where uvicorn would use it
        runner.run(run())
    return server.started


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """uvicorn handles SIGTERM and SIGINT, then raises the signal again once it has shut down, to the
    handler that was there before it. Make that handler a no-op, so that a clean stop exits 0 instead of
    dying of the re-raised signal (status -15) or a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    pass
