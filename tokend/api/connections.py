"""What a connection may cost before it is a request: uvicorn's httptools protocol with limits.

uvicorn sets none of these on its own: a connection that sends nothing, or half a request, stays open for
ever (its keep-alive timer runs only between two requests, and any byte stops it); a header line may be of
any length (httptools gathers it whole before handing it over) and a request may have any number of them;
and each connection holds a file descriptor until the process has none left, when nobody is served. So:

- A request must arrive whole (head and body) within READ_TIMEOUT of its first byte, or of the connection
  itself; else the connection is closed. Local programs send theirs in microseconds.
- A request head is at most MAX_HEAD_SIZE bytes and MAX_HEADERS header fields; beyond either, 431 and close.
- Connections cost file descriptors, and both sides draw on one Budget of them (see connection_cap): the
  clients' connections and the proxy's upstream ones, which may take at most a quarter of it. One more
  client connection than the budget allows closes the connection that has waited longest for a request
  (idle, or half sent) as nginx reuses its idle ones, else an idle upstream connection, so that a flood of
  idle or slow connections, or a busy proxy, costs the others nothing, rather than waiting for the flood to
  time out. A connection whose request is being answered is never closed for another.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokend.api.guard import PEER_EXTENSION
from tokend.api.proxy_cycle import ProxyCycle

__all__ = ["MAX_CONNECTIONS", "MAX_HEADERS", "MAX_HEAD_SIZE", "READ_TIMEOUT", "Budget", "connection_cap",
           "limited_protocol"]

READ_TIMEOUT = 10.0  # seconds for a whole request, from its first byte (or from the connection)
MAX_HEAD_SIZE = 16 * 1024  # request line and headers, as Node's default: a client key and a token fit many times
MAX_HEADERS = 100  # as Python's http.client
MAX_CONNECTIONS = 1024  # local programs, each with a connection or a small pool: far more than they need
# Descriptors kept for all else: upstream connections, secret files, the event loop's own, logging.
FD_RESERVE = 128


def connection_cap() -> int:
    """How many connections may be open at once: MAX_CONNECTIONS, fewer if the open-files limit is lower
    (systemd's default is 1024: the unit sets LimitNOFILE= to make room for all of them)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class Budget:
    """The connections one process may hold open, shared by its clients' and its upstream connections."""

    def __init__(self, total: int) -> None:
        self.total = total
        # The proxy's share: however many upstream connections it wants, most of the budget stays the
        # clients', and /token keeps answering.
        self.upstream_limit = max(4, total // 4)
        self.clients = 0
        self.upstream = 0
        # Closes one idle upstream connection, False when none is idle (set by the proxy's pool).
        self.reclaim: Callable[[], bool] = lambda: False

    @classmethod
    def from_limit(cls) -> Budget:
        return cls(connection_cap())

    def over(self) -> bool:
        return self.clients + self.upstream > self.total

    def upstream_room(self) -> bool:
        return self.upstream < self.upstream_limit and self.clients + self.upstream < self.total


class _HeadTooLarge(Exception):
    pass


class _LimitedProtocol(HttpToolsProtocol):
    budget = Budget(MAX_CONNECTIONS)
    # Where request bodies stream on as they come (the proxy): there the read timeout bounds the silence
    # between two pieces of a body, not the whole body, which may be a gigabyte upload.
    streamed_prefix = b"/proxy/"
    streamed_sockets: frozenset[object] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        # Bytes of the request head received so far (None once it is whole): httptools holds a header until
        # its line ends, so a head is measured as it comes in, not only by the fields it yields.
        self._head_size: int | None = 0
        self._fields_size = self._header_count = 0  # the head's fields as httptools yields them
        self._too_large = False
        self._in_request = False  # a request has begun and not yet arrived whole
        self._streamed_connection = False  # a proxy listener's connection: every body streams
        self._body_streams = False  # this request's body streams on: the timer bounds silence, not the whole
        self._last_read = 0.0  # when the last piece of a streamed body came
        # When this connection began to wait for a request (or the rest of one); None while it is answered.
        self.waiting_since: float | None = None
        self._peer: dict[str, int] | None = None  # the unix socket peer's pid, uid and gid

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = _peer_credentials(transport)
        self._streamed_connection = transport.get_extra_info("sockname") in self.streamed_sockets
        self.waiting_since = self.loop.time()
        self._arm_read_timer()
        self.budget.clients += 1
        if self.budget.over():
            self._make_room()

    def _make_room(self) -> None:
        """Close the client connection that has waited longest for its request, else an idle upstream
        connection, else this one (all others are busy)."""
        waiting = [
            other for other in self.connections
            if isinstance(other, _LimitedProtocol) and other.waiting_since is not None
            and not other.transport.is_closing() and other is not self
        ]
        if waiting:
            min(waiting, key=lambda other: other.waiting_since or 0.0).transport.close()
        elif not self.budget.reclaim():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        self.budget.clients -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_size is not None:
            self._head_size += len(data)
        super().data_received(data)
        if self._head_size is not None and self._head_size > MAX_HEAD_SIZE and not self.transport.is_closing():
            self._refuse_head()
        elif self._in_request:
            if self._read_timer is None:
                # Armed only for a request left half-way: most arrive whole in one read, and cost no timer.
                # For the first request, the clock started with the connection.
                if self.waiting_since is None:
                    self.waiting_since = self.loop.time()
                self._arm_read_timer()
            elif self._body_streams:
                # Not re-armed for every piece of a streamed body (a timer each, thousands a second): the
                # timer looks at the time of the last piece when it fires.
                self._last_read = self.loop.time()

    def on_message_begin(self) -> None:
        self._in_request = True
        super().on_message_begin()
        if self._peer is not None:
            self.scope["extensions"] = {PEER_EXTENSION: dict(self._peer)}  # type: ignore[dict-item]

    def on_url(self, url: bytes) -> None:
        self._body_streams = self._streamed_connection or url.startswith(self.streamed_prefix)
        self._fields_size += len(url)
        if self._fields_size > MAX_HEAD_SIZE:
            self._head_too_large()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._fields_size += len(name) + len(value)
        if self._fields_size > MAX_HEAD_SIZE or self._header_count > MAX_HEADERS:
            self._head_too_large()
        super().on_header(name, value)

    def _head_too_large(self) -> None:
        self._too_large = True
        raise _HeadTooLarge  # stops the parser here, before the app sees the request: a parser error

    def on_headers_complete(self) -> None:
        self._head_size = None
        if self._body_streams and not self.parser.should_upgrade():
            self._start_proxied()
        else:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if isinstance(cycle, ProxyCycle):
            if not cycle.response_complete and cycle.add_body(body):
                self.flow.pause_reading()
        else:
            super().on_body(body)

    def _start_proxied(self) -> None:
        """uvicorn's on_headers_complete for a proxied request, with the proxy's own cycle (ProxyCycle: each
        answer's head and body in one write)."""
        parser, scope = self.parser, self.scope
        scope["method"] = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        scope["path"] = self.root_path + (urllib.parse.unquote(path) if "%" in path else path)
        scope["raw_path"] = self.root_path.encode("ascii") + url.path
        scope["query_string"] = url.query or b""
        existing = self.cycle
        self.cycle = ProxyCycle(
            scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=version != "1.0" and parser.should_keep_alive(), on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: after the one being answered, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        self._in_request = self._body_streams = False
        self.waiting_since = None
        self._head_size = self._fields_size = self._header_count = 0  # what follows is the next request's head
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete:  # idle until the next request (not one started from the pipeline)
            self.waiting_since = self.loop.time()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        body = (f"A request head is at most {MAX_HEAD_SIZE} bytes and {MAX_HEADERS} header fields.").encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._last_read = self.loop.time()
        self._read_timer = self.loop.call_later(READ_TIMEOUT, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._body_streams and self._in_request:
            left = self._last_read + READ_TIMEOUT - self.loop.time()
            if left > 0:
                self._read_timer = self.loop.call_later(left, self._read_timed_out)
                return
        if not self.transport.is_closing():
            self.transport.close()


def _peer_credentials(transport: asyncio.BaseTransport) -> dict[str, int] | None:
    """Who is at the other end of a unix socket connection (SO_PEERCRED: the kernel's word, taken when it
    connected); None over TCP, where nobody can be known that way."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except OSError:
        return None
    return {"pid": pid, "uid": uid, "gid": gid}


def limited_protocol(
    budget: Budget, streamed_sockets: frozenset[object] = frozenset()
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the limits above, for `uvicorn.Config(http=...)`. `streamed_sockets`:
    the addresses of listeners whose every request streams its body on (the proxy's own listeners)."""

    class LimitedHttpToolsProtocol(_LimitedProtocol):
        pass

    LimitedHttpToolsProtocol.budget = budget
    LimitedHttpToolsProtocol.streamed_sockets = streamed_sockets
    return LimitedHttpToolsProtocol
