"""The HTTP server every listener is served by: uvicorn, configured for a loopback credential daemon
(no proxy headers believed, no access log, limits on connections and request heads), and the stop signals
it leaves behind made harmless.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from tokend.api.connections import Budget, limited_protocol

__all__ = ["GRACEFUL_SHUTDOWN", "http_server", "stop_signals_end_cleanly"]

GRACEFUL_SHUTDOWN = 3  # seconds for in-flight local requests after SIGTERM, beyond the longest login


def http_server(
    app: ASGIApp, budget: Budget, streamed: frozenset[object], longest_login: float = 0.0
) -> uvicorn.Server:
    """uvicorn serving `app`; `streamed`: the addresses of listeners whose requests stream their bodies on;
    `longest_login`: the longest provider `timeout`, which a request waiting for a login in flight is given at a
    stop (the stop waits for that login anyway) instead of being cut off."""
    config = uvicorn.Config(
        app,
        # Nothing in front of tokend is trusted to say who the client is: X-Forwarded-For is refused,
        # never believed (uvicorn would otherwise rewrite the peer address from it for 127.0.0.1).
        proxy_headers=False,
        log_config=None,
        access_log=False,
        lifespan="off",  # the daemon's parts are started and stopped around the server
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN + int(longest_login + 0.999),
        # A header timeout, a connection cap and header limits, which uvicorn has not on its own.
        http=limited_protocol(budget, streamed),
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def stop_signals_end_cleanly() -> Iterator[None]:
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
