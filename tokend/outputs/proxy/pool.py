"""Upstream connections for the proxy: HTTP/1.1 kept alive and pooled per origin, answers framed by llhttp.

Why not httpx: the proxy's data path runs once per proxied request, and one shared httpx.AsyncClient
measured about 0.01x the requests/s of an nginx reverse proxy on the same machine, while a small pool of
raw connections reached far more. So this module writes the request itself (a head written whole, a body
streamed) and leaves the answer to httptools' response parser (llhttp, Node's parser): its framing (RFC 9112
section 6.3), its refusals (a negative or doubled Content-Length, a bad chunk size, Transfer-Encoding beside
Content-Length), and whether the upstream keeps the connection open. What llhttp refuses closes the
connection and is the client's 502.

A connection goes back to the pool only when its answer was read exactly to its end and the upstream did
not say `Connection: close`; a byte beyond the end, or any byte while it waits in the pool, closes it: such
bytes could only be read as the next client's answer. Memory per answer stays near CHUNK: reading from the
upstream pauses while that much waits for the client.

Connections cost file descriptors, which the clients' connections draw on too (tokend.api.connections.Budget):
the pool opens at most its share of them, keeps at most IDLE_PER_ORIGIN idle per origin, and closes one
idle for IDLE_TIMEOUT. One TLS handshake per connection, never per request; certificates are verified with
the trust store logins use.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import cast

import httptools

from tokend.api.connections import Budget
from tokend.outputs.proxy.paths import Origin

__all__ = ["Answer", "Connection", "Pool", "UpstreamFailure"]

CHUNK = 64 * 1024  # reading from the upstream pauses once this much waits for the client
HEAD_LIMIT = 64 * 1024  # an answer head larger than this is refused
MAX_HEADERS = 256  # header fields in an answer head
IDLE_PER_ORIGIN = 32  # idle connections kept per origin; more are closed when they come back
# Seconds an idle connection is kept: below the keep-alive timeout of common servers (nginx 75 s, Node 5 s,
# Go's 90 s; Node's being lowest is why), so that tokend closes it rather than racing the upstream to it.
IDLE_TIMEOUT = 4.0


class UpstreamFailure(Exception):
    """The upstream could not be reached or broke off. The message names no secret: host, port, reason."""

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # The upstream closed the connection before a byte of its answer: the mark of a kept-alive connection
        # it had closed meanwhile (not a timeout, not a half-sent answer).
        self.stale = stale


class _Refused(Exception):
    """Raised from a parser callback: the answer is refused for the reason given (no upstream bytes in it)."""


class Answer:
    """An upstream answer: its status and headers (names lowercased), then its body as it arrives."""

    __slots__ = ("_conn", "_pieces", "_read_timeout", "_size", "_waiter", "complete", "error", "headers",
                 "status")

    def __init__(self, conn: Connection, read_timeout: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0  # bytes in _pieces
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # the parser has seen the answer's end
        self.error: UpstreamFailure | None = None

    @property
    def done(self) -> bool:
        """True once the whole body has been handed over (by take() or chunk())."""
        return self.complete and not self._pieces

    def take(self) -> bytes:
        """What has arrived of the body and not been handed over yet, without waiting (b"" when nothing)."""
        pieces = self._pieces
        if not pieces:
            return b""
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        self._conn.drained()
        return data

    async def chunk(self) -> bytes:
        """The next piece of the body, waiting for it (at most the read timeout); `done` turns True with the
        last one. UpstreamFailure when the upstream breaks off, is silent too long, or sends a bad body."""
        if not self._pieces and not self.complete and self.error is None:
            await self._conn.wait(self, self._read_timeout, f"no data for {self._read_timeout:g}s")
        if self.error is not None and not self._pieces:
            raise self.error
        return self.take()

    async def discard(self, limit: int = CHUNK) -> None:
        """Read and drop the body (a 401 being retried); a large one closes the connection instead."""
        read = len(self.take())
        while not self.done and read <= limit:
            read += len(await self.chunk())
        if not self.done:
            self._conn.reusable = False

    def release(self) -> None:
        """Give the connection back to its pool (or close it, when the body was not read to its end)."""
        if not self.done:
            self._conn.reusable = False
        self._conn.release()

    # --- fed by the connection -------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: UpstreamFailure) -> None:
        if self.error is None and not self.complete:
            self.error = failure
        self._wake()


class Connection(asyncio.Protocol):
    """One upstream connection, and the parser of the answer it is waiting for. `reusable` turns False once
    anything leaves it in an unknown state; then it is closed on release, never pooled."""

    __slots__ = ("_answer", "_expect_body", "_head_size", "_parser", "_paused", "_pool", "_received",
                 "_write_waiter", "closed", "idle_since", "origin", "reusable", "reused", "transport")

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self._answer: Answer | None = None  # the answer being read; None between exchanges
        # One parser for the connection's life: llhttp reads answer after answer on a kept-alive connection.
        self._parser = httptools.HttpResponseParser(self)
        self._expect_body = True  # False for a HEAD request: the answer ends with its head
        self._head_size = 0
        self._received = False  # a byte of the current answer has arrived
        self._paused = False
        self._write_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        answer, parser = self._answer, self._parser
        if answer is None or answer.complete:
            # Bytes nobody asked for (while pooled, or after the answer's end): never anyone's answer.
            self._discard()
            return
        self._received = True
        try:
            parser.feed_data(data)
        except _Refused as exc:
            self._refuse(answer, str(exc))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            self._refuse(answer, str(cause) if isinstance(cause, _Refused) else "the upstream sent a malformed answer")
        except httptools.HttpParserUpgrade:
            self._refuse(answer, "the upstream switched protocols")
        except httptools.HttpParserError as exc:
            # llhttp's reasons are fixed sentences ("Invalid character in Content-Length"), never upstream data.
            self._refuse(answer, f"the upstream sent an answer HTTP/1.1 cannot frame ({exc})")

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost says what that meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._pool.closed(self)
        answer = self._answer
        if answer is not None and not answer.complete:
            if answer.status and not self._framed_by_length():
                self._complete(answer)  # read until the upstream closes (RFC 9112 section 6.3, rule 8)
            else:
                where = "before a byte of its answer" if not self._received else "mid-answer"
                answer._fail(self.failure(f"the upstream closed the connection {where}", stale=not self._received))
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        if self._write_waiter is None or self._write_waiter.done():
            self._write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)

    # --- llhttp's callbacks --------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        assert self._answer is not None
        if self._answer.status and not 100 <= self._answer.status < 200:
            raise _Refused("the upstream sent more than one answer")

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._answer is not None
        headers = self._answer.headers
        self._count(len(name) + len(value))
        if len(headers) >= MAX_HEADERS:
            raise _Refused(f"the upstream's answer has more than {MAX_HEADERS} header fields")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        answer, parser = self._answer, self._parser
        assert answer is not None
        status = parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            answer.headers = []
            answer.status = status
            return
        answer.status = status
        if not parser.should_keep_alive():
            self.reusable = False  # Connection: close, or an HTTP/1.0 answer without keep-alive
        if not self._expect_body:
            # llhttp cannot be told that a HEAD answer has no body; what follows it is unknown, so the
            # connection is not used again.
            self.reusable = False
            self._complete(answer)
        answer._wake()

    def on_body(self, body: bytes) -> None:
        answer = self._answer
        assert answer is not None
        if answer.complete:
            return  # after a HEAD answer: dropped with the connection
        answer._pieces.append(body)
        answer._size += len(body)
        if answer._size > CHUNK and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        answer._wake()

    def on_message_complete(self) -> None:
        answer = self._answer
        assert answer is not None
        if 100 <= answer.status < 200:
            return
        self._complete(answer)

    # --- used by the app and the answer ----------------------------------------------------------------

    def begin(self, method: str, read_timeout: float) -> None:
        """Be ready for the answer to a request about to be sent (it may come while the body still goes)."""
        self._answer = Answer(self, read_timeout)
        self._expect_body = method != "HEAD"
        self._head_size = 0
        self._received = False

    async def send(self, data: bytes) -> None:
        """Write, and wait while the upstream is slower than the client: memory stays bounded."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise self.failure("the upstream closed the connection", stale=not self._received)
        transport.write(data)
        await self._drained()

    async def send_chunk(self, chunk: bytes) -> None:
        """One piece of a chunked body, framed without copying it."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise self.failure("the upstream closed the connection", stale=not self._received)
        transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        await self._drained()

    async def _drained(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            await waiter
            if self.closed:
                raise self.failure("the upstream closed the connection", stale=not self._received)

    async def answer(self, read_timeout: float) -> Answer:
        """The answer's head (interim 1xx answers skipped); its body then comes by Answer.take/chunk."""
        answer = self._answer
        assert answer is not None, "begin() comes first"
        while (not answer.status or 100 <= answer.status < 200) and answer.error is None:
            await self.wait(answer, read_timeout, f"no answer within {read_timeout:g}s")
        if answer.error is not None:
            raise answer.error
        return answer

    async def wait(self, answer: Answer, seconds: float, silence: str) -> None:
        """Until the answer moves on (its head, a piece of body, its end, a failure) or `seconds` pass."""
        waiter = answer._waiter = asyncio.get_running_loop().create_future()
        timer = asyncio.get_running_loop().call_later(seconds, self._silent, answer, silence)
        try:
            await waiter
        finally:
            timer.cancel()
            answer._waiter = None

    def drained(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def failure(self, reason: str, *, stale: bool = False) -> UpstreamFailure:
        self.close()
        where = f"{self.origin.host}:{self.origin.port}"
        return UpstreamFailure(f"the connection to {where} failed: {reason}", stale=stale)

    def release(self) -> None:
        self._answer = None
        self._pool.release(self)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- helpers -------------------------------------------------------------------------------------------

    def _complete(self, answer: Answer) -> None:
        answer.complete = True
        answer._wake()

    def _framed_by_length(self) -> bool:
        """Whether the answer said where it ends (else it ends when the connection does)."""
        assert self._answer is not None
        status = self._answer.status
        if status in (204, 304):
            return True
        return any(name in (b"content-length", b"transfer-encoding") for name, _ in self._answer.headers)

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > HEAD_LIMIT:
            raise _Refused("the upstream's answer head is too large")

    def _refuse(self, answer: Answer, reason: str) -> None:
        answer._fail(self.failure(reason))

    def _silent(self, answer: Answer, reason: str) -> None:
        self.transport.abort() if self.transport is not None else None
        answer._fail(self.failure(reason))

    def _discard(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Upstream connections by origin. Use as `async with Pool(...) as pool:`; closing closes them all."""

    def __init__(self, tls: Callable[[], ssl.SSLContext], budget: Budget | None = None) -> None:
        """`tls` makes the context for https origins, called once, when the first one is reached. `budget`:
        the descriptors shared with the clients' connections (a budget of its own when not given)."""
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        self._budget = budget if budget is not None else Budget.from_limit()
        self._budget.reclaim = self._close_idlest
        self._idle: dict[Origin, collections.deque[Connection]] = {}
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self.opened = 0  # connections made, for tests and /metrics: keep-alive shows as few of them

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    @property
    def idle(self) -> int:
        return sum(map(len, self._idle.values()))

    async def connection(self, origin: Origin, connect_timeout: float) -> Connection:
        """An idle connection to `origin` that is still open, else a new one."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the upstream
            if not conn.closed and conn.reusable:
                conn.reused = True
                return conn
            conn.close()
        return await self._open(origin, connect_timeout)

    def release(self, conn: Connection) -> None:
        if not conn.reusable or conn.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, collections.deque())
        if len(idle) >= IDLE_PER_ORIGIN:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_TIMEOUT, self._sweep)
        self._wake_one()  # a connection to this origin is to be had: a waiter for it may take it

    def closed(self, conn: Connection) -> None:
        """A connection's descriptor is gone (called by the connection itself)."""
        self._budget.upstream -= 1
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
        self._wake_one()

    async def _open(self, origin: Origin, connect_timeout: float) -> Connection:
        where = f"{origin.host}:{origin.port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        while not self._budget.upstream_room() and not self._close_idlest(other_than=origin):
            if not await self._wait_for_room(deadline - loop.time()):
                raise UpstreamFailure(f"cannot connect to {where}: tokend has {self._budget.upstream} upstream "
                                      f"connections open, as many as its open-files limit leaves room for")
            if (idle := self._idle.get(origin)) and (conn := idle.pop()) and not conn.closed:
                conn.reused = True
                return conn
        tls = self._context() if origin.tls else None
        conn = Connection(self, origin)
        self._budget.upstream += 1  # the descriptor exists from the first connect attempt
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=tls,
                                             server_hostname=origin.host if tls else None)
        except BaseException as exc:
            if conn.transport is None:
                self._budget.upstream -= 1  # else the connection gives it back when it is lost
            else:
                conn.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure(f"cannot connect to {where} within {connect_timeout:g}s") from None
            if isinstance(exc, OSError | ssl.SSLError):
                raise UpstreamFailure(f"cannot connect to {where}: {_reason(exc)}") from None
            raise
        self.opened += 1
        return conn

    async def _wait_for_room(self, seconds: float) -> bool:
        if seconds <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
        return True

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_idlest(self, other_than: Origin | None = None) -> bool:
        """Close the connection idle longest (of any origin but `other_than`): room for another. False when
        none is idle."""
        candidates = [idle[0] for origin, idle in self._idle.items() if idle and origin != other_than]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda conn: conn.idle_since)
        self._idle[oldest.origin].popleft()
        oldest.close()
        return True

    def _sweep(self) -> None:
        """Close the connections idle for IDLE_TIMEOUT; come back while any are left."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - IDLE_TIMEOUT
        left = False
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= cutoff:
                idle.popleft().close()
            left = left or bool(idle)
        self._sweeper = loop.call_later(IDLE_TIMEOUT / 2, self._sweep) if left else None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = self._make_tls()
        return self._tls


def _reason(exc: BaseException) -> str:
    """What went wrong, in words that hold no data from the exchange."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
