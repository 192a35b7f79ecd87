"""Upstream connections for the proxy: HTTP/1.1 over asyncio streams, kept alive and pooled per origin.

Why not httpx: the proxy's data path runs once per proxied request, and one shared httpx.AsyncClient
measured about 0.01x the requests/s of an nginx reverse proxy on the same machine, while a small pool of
raw connections reached 0.4-0.6x. So this module speaks just the HTTP/1.1 a reverse proxy needs: a request
head written whole, a body streamed, an answer head parsed, and an answer body read by its framing (RFC 9112
section 6.3: none, Content-Length, chunked, or until the connection closes). One TLS handshake per
connection, never per request; certificates are verified with the trust store logins use.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from types import TracebackType

from tokend.proxy.paths import Origin

__all__ = ["Answer", "Connection", "Pool", "UpstreamFailure"]

CHUNK = 64 * 1024  # the most read from an upstream at once: memory per request stays near this
HEAD_LIMIT = 64 * 1024  # an answer head larger than this is refused
IDLE_PER_ORIGIN = 256  # idle connections kept per origin; more are closed when they come back


class UpstreamFailure(Exception):
    """The upstream could not be reached or broke off. The message names no secret: host, port, reason."""

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # The upstream closed the connection before a byte of its answer: the mark of a kept-alive connection
        # it had closed meanwhile (not a timeout, not a half-sent answer).
        self.stale = stale


class Answer:
    """An upstream answer: its status and headers (names lowercased), and its body read chunk by chunk."""

    __slots__ = ("_chunked", "_conn", "_left", "_read_timeout", "done", "headers", "prefetched", "status")

    def __init__(self, conn: Connection, status: int, headers: list[tuple[bytes, bytes]], read_timeout: float,
                 *, bodiless: bool) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self._read_timeout = read_timeout
        self._chunked = False
        self._left: int | None = None  # bytes left of a Content-Length body (or chunk); None: until close
        self.done = bodiless
        self.prefetched: bytes | None = None  # a small body read with the head: see Connection.answer
        if not bodiless:
            self._framing(headers)

    @property
    def small(self) -> int | None:
        """The length of a Content-Length body small enough to read at once with the head, else None."""
        return self._left if not self._chunked and self._left is not None and 0 < self._left <= CHUNK else None

    async def prefetch(self, length: int) -> None:
        self.prefetched = await self._conn.reader.readexactly(length)
        self._left, self.done = 0, True

    def _framing(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b"transfer-encoding":
                self._chunked = value.lower().rstrip().endswith(b"chunked")
                self._left = 0
                return
        for name, value in headers:
            if name == b"content-length":
                try:
                    self._left = int(value)
                except ValueError:
                    raise ValueError("the upstream sent a malformed Content-Length") from None
                self.done = self._left == 0
                return
        self._conn.reusable = False  # read until the upstream closes

    async def chunk(self) -> bytes:
        """The next piece of the body (at most CHUNK bytes); `done` turns True with the last one."""
        if self.prefetched is not None:
            data, self.prefetched = self.prefetched, None
            return data
        conn = self._conn
        timer = conn.timer(self._read_timeout)
        try:
            return await (self._next_chunked() if self._chunked else self._next_plain())
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            reason = f"no data for {self._read_timeout:g}s" if conn.expired else _reason(exc)
            raise conn.failure(reason) from None
        finally:
            timer.cancel()

    async def _next_plain(self) -> bytes:
        reader = self._conn.reader
        if self._left is None:
            data = await reader.read(CHUNK)
            self.done = not data
            return data
        data = await reader.read(min(self._left, CHUNK))
        if not data:
            raise ValueError("the upstream closed the connection before the end of the body")
        self._left -= len(data)
        self.done = self._left == 0
        return data

    async def _next_chunked(self) -> bytes:
        reader = self._conn.reader
        if self._left == 0:
            size_line = await reader.readuntil(b"\r\n")
            self._left = int(size_line.split(b";", 1)[0].strip(), 16)
            if self._left == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, dropped
                    pass
                self.done = True
                return b""
        assert self._left is not None
        data = await reader.read(min(self._left, CHUNK))
        if not data:
            raise ValueError("the upstream closed the connection inside a chunk")
        self._left -= len(data)
        if self._left == 0:
            await reader.readexactly(2)  # the CRLF after the chunk
        return data

    async def discard(self, limit: int = CHUNK) -> None:
        """Read and drop the body (a 401 being retried); a large one closes the connection instead."""
        read = 0
        while not self.done and read <= limit:
            read += len(await self.chunk())
        if not self.done:
            self._conn.reusable = False

    def release(self) -> None:
        """Give the connection back to its pool (or close it, when the body was not read to its end)."""
        if not self.done:
            self._conn.reusable = False
        self._conn.release()


class Connection:
    """One upstream connection. `reusable` turns False once anything leaves it in an unknown state."""

    __slots__ = ("_pool", "expired", "origin", "reader", "reusable", "reused", "writer")

    def __init__(self, pool: Pool, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._pool = pool
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.reusable = True
        self.reused = False
        self.expired = False  # a read timed out (see timer)

    def alive(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def timer(self, seconds: float) -> asyncio.TimerHandle:
        """Abort the connection in `seconds` unless cancelled: the pending read then fails, and `expired`
        says why. A plain timer: asyncio.timeout() costs measurably more on the data path."""
        return asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.writer.transport.abort()

    async def send(self, data: bytes) -> None:
        """Write, and wait while the upstream is slower than the client: memory stays bounded."""
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() > CHUNK:
                await self.writer.drain()
        except OSError as exc:
            raise self.failure(_reason(exc), stale=_closed_unanswered(exc)) from None

    async def answer(self, method: str, read_timeout: float) -> Answer:
        """Read the answer head (skipping 1xx interim answers)."""
        timer = self.timer(read_timeout)
        try:
            while True:
                status, headers = _parse_head(await self.reader.readuntil(b"\r\n\r\n"))
                if not 100 <= status < 200:
                    break
            answer = Answer(self, status, headers, read_timeout, bodiless=method == "HEAD" or status in (204, 304))
            if (length := answer.small) is not None:
                await answer.prefetch(length)  # most API answers: one read, under the head's timer
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            reason = f"no answer within {read_timeout:g}s" if self.expired else _reason(exc)
            raise self.failure(reason, stale=_closed_unanswered(exc) and not self.expired) from None
        finally:
            timer.cancel()
        return answer

    def failure(self, reason: str, *, stale: bool = False) -> UpstreamFailure:
        self.reusable = False
        self.close()
        where = f"{self.origin.host}:{self.origin.port}"
        return UpstreamFailure(f"the connection to {where} failed: {reason}", stale=stale)

    def release(self) -> None:
        self._pool.release(self)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


class Pool:
    """Idle upstream connections by origin. Use as `async with Pool(...) as pool:`; closing closes them all."""

    def __init__(self, tls: Callable[[], ssl.SSLContext]) -> None:
        """`tls` makes the context for https origins, called once, when the first one is reached."""
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[Origin, collections.deque[Connection]] = {}
        self.opened = 0  # connections made, for tests and /metrics: keep-alive shows as few of them

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    async def connection(self, origin: Origin, connect_timeout: float) -> Connection:
        """An idle connection to `origin` that is still open, else a new one."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the upstream
            if conn.alive():
                conn.reused = True
                return conn
            conn.close()
        return await self._open(origin, connect_timeout)

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.origin, collections.deque())
        if conn.reusable and conn.alive() and len(idle) < IDLE_PER_ORIGIN:
            idle.append(conn)
        else:
            conn.close()

    async def _open(self, origin: Origin, connect_timeout: float) -> Connection:
        tls = self._context() if origin.tls else None
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None,
                    limit=HEAD_LIMIT,
                )
        except TimeoutError:
            where = f"{origin.host}:{origin.port}"
            raise UpstreamFailure(f"cannot connect to {where} within {connect_timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamFailure(f"cannot connect to {origin.host}:{origin.port}: {_reason(exc)}") from None
        self.opened += 1
        return Connection(self, origin, reader, writer)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = self._make_tls()
        return self._tls


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError("the upstream did not answer HTTP/1.x")
    status = int(rest[:3])
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError("the upstream sent a malformed header")
        headers.append((name.lower(), value.strip()))
    return status, headers


def _closed_unanswered(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return isinstance(exc, ConnectionResetError | BrokenPipeError)


def _reason(exc: BaseException) -> str:
    """What went wrong, in words that hold no data from the exchange."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the upstream closed the connection mid-answer"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "the upstream's answer head is too large"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, ValueError):
        message = str(exc)  # ours when it starts so; int()'s would echo upstream bytes
        return message if message.startswith("the upstream") else "the upstream sent a malformed answer"
    return type(exc).__name__
