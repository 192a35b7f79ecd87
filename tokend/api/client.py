"""The client side of the local API, for `tokend get`, `status` and `refresh`.

HTTP/1.1 written straight onto a socket (TCP, or the daemon's unix socket): one request per connection,
`Connection: close`, the answer read by its Content-Length, its chunks, or to the end of the stream.

`tokend get` must cost little more than starting Python, so this module imports almost nothing:
http.client alone takes ~20 ms (email, ssl) for features a loopback call never uses, `socket` ~2.5 ms
(enum conversions, selectors) over the C module `_socket` it wraps, which has all a client needs;
typing and json only when a type checker or a JSON body asks for them.
"""

from __future__ import annotations

import _socket
import time
from urllib.parse import urlsplit

from tokend._version import __version__
from tokend.errors import DaemonUnavailable, TokendError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy treats the name alike)
if TYPE_CHECKING:
    from typing import Any

    from tokend.config.discovery import Address

DEFAULT_TIMEOUT = 15.0  # a forced refresh waits for a login, itself bounded at 10 s by default
_MAX_LINE = 65536  # as http.client: a status or header line longer than this is garbage, not an answer
_MAX_HEADERS = 100
_NO_BODY = frozenset({204, 304})  # and every 1xx: RFC 9112 section 6.3
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class Reply:
    """The daemon's answer: its status and its whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}  # names in lower case

    def __repr__(self) -> str:
        return f"Reply(status={self.status!r}, body={self.body[:60]!r}{'...' if len(self.body) > 60 else ''})"

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def error_message(self) -> str:
        """The daemon's error sentence, or a description of an unexpected answer."""
        data = self._json_or_none()
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
        return f"the daemon answered {self.status}"

    @property
    def error_code(self) -> str | None:
        data = self._json_or_none()
        code = data.get("error") if isinstance(data, dict) else None
        return code if isinstance(code, str) else None

    def _json_or_none(self) -> Any:
        try:
            return self.json()
        except ValueError:  # also UnicodeDecodeError
            return None


class _BadReply(Exception):
    """The peer's bytes are not an HTTP/1.1 answer."""


class Client:
    """Talks to one daemon. `client_key`, when given, signs each request (tokend.api.request_signing)."""

    def __init__(self, address: Address, *, timeout: float = DEFAULT_TIMEOUT, client_key: str | None = None) -> None:
        if client_key is not None and not _is_header_value(client_key):
            raise TokendError("the client key must be one line of printable ASCII text")
        self.address = address
        self._timeout = timeout
        self._client_key = client_key

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        """Send one request and read the whole answer; DaemonUnavailable when there is none to read."""
        url = self.address.url
        message = self._encode(method, path, body)  # a bad URL is reported before anything is sent
        deadline = time.monotonic() + self._timeout
        try:
            sock = self._connect()
            try:
                sock.sendall(message)
                return _read_reply(_Stream(sock, deadline))
            finally:
                sock.close()
        except (ConnectionRefusedError, FileNotFoundError):
            raise DaemonUnavailable(
                f"tokend is not running at {url} (connection refused); start it with `tokend run`"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(f"tokend at {url} did not answer in {self._timeout:g}s") from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot reach tokend at {url}: {exc.strerror or exc}") from None
        except _BadReply as exc:
            raise DaemonUnavailable(f"tokend at {url} answered garbage: {exc}") from None

    def _connect(self) -> _socket.socket:
        if self.address.socket is not None:
            return _connected(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, self.address.socket, self._timeout)
        host, port = self._host_and_port()
        try:  # bytes, not str: getaddrinfo() would load the idna codec (and unicodedata) to encode a str
            name = host.encode("ascii")
        except UnicodeEncodeError:
            name = host.encode("idna")
        error = OSError(f"{host} has no address")
        # Every address the name has, in order, as socket.create_connection() does: `localhost` may be
        # ::1 first while the daemon listens on 127.0.0.1 only.
        for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
            try:
                return _connected(family, kind, proto, address, self._timeout)
            except OSError as exc:
                error = exc
        raise error

    def _host_and_port(self) -> tuple[str, int]:
        parts = urlsplit(self.address.url)
        try:
            port = parts.port or 80
        except ValueError:  # not a number, or out of range
            port = 0
        if parts.scheme != "http" or not parts.hostname or not port:
            raise DaemonUnavailable(f"{self.address.url!r} is not an http:// URL of a tokend daemon")
        return parts.hostname, port

    def _encode(self, method: str, path: str, body: Any) -> bytes:
        if self.address.socket is not None:
            host = "localhost"  # the daemon checks no Host on a unix socket; HTTP/1.1 still wants one
        else:
            name, port = self._host_and_port()
            host = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        headers = [f"Host: {host}", f"User-Agent: tokend/{__version__}", "Accept: application/json",
                   "X-Tokend-Request: cli", "Connection: close"]
        if self._client_key is not None:
            # Signed, never the key itself: whatever answers on the port may not be the daemon. Imported
            # here: hashlib (OpenSSL) and secrets are the larger part of a keyless `tokend get`'s imports.
            from tokend.api import request_signing as signed

            headers.append(f"Authorization: {signed.authorization(self._client_key, method, path)}")
        payload = b""
        if body is not None:
            import json

            payload = json.dumps(body).encode()
            headers.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            headers.append(f"Content-Length: {len(payload)}")
        head = "".join(f"{line}\r\n" for line in [f"{method} {path} HTTP/1.1", *headers])
        return f"{head}\r\n".encode("latin-1") + payload


def _connected(family: int, kind: int, proto: int, address: Any, timeout: float) -> _socket.socket:
    sock = _socket.socket(family, kind, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_header_value(value: str) -> bool:
    # Not empty, and no CR or LF (a header injection) nor anything else a header cannot carry.
    return bool(value) and value.isascii() and value.isprintable()


class _Stream:
    """Buffered reads from a socket, all of them within one deadline."""

    def __init__(self, sock: _socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = bytearray()
        self._received = 0  # to tell "closed without a word" from "closed half-way"

    def line(self) -> bytes:
        """One line, without its line ending (CRLF, or a bare LF as RFC 9112 lets a reader accept)."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _MAX_LINE:
                raise _BadReply("a line longer than 64 KiB")
            if not self._fill():
                raise _BadReply("the connection was closed before any answer" if self._received == 0
                                else "the connection was closed in the middle of the answer")
        if end > _MAX_LINE:
            raise _BadReply("a line longer than 64 KiB")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.removesuffix(b"\r")

    def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise _BadReply(f"the answer ended after {len(self._buffer)} of {size} body bytes")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def rest(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _fill(self) -> bool:
        """Read what the peer sent next; False at the end of the stream."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(left)
        data = self._sock.recv(65536)
        self._received += len(data)
        self._buffer += data
        return bool(data)


def _read_reply(stream: _Stream) -> Reply:
    status, headers = _read_head(stream)
    while 100 <= status < 200:  # interim answers (100 Continue, 103 Early Hints) come before the real one
        if status == 101:
            raise _BadReply("a protocol switch (101) nobody asked for")
        status, headers = _read_head(stream)
    if status in _NO_BODY:
        return Reply(status, b"", headers)
    return Reply(status, _read_body(stream, headers), headers)


def _read_head(stream: _Stream) -> tuple[int, dict[str, str]]:
    status = _parse_status(stream.line())
    headers: dict[str, str] = {}
    while line := stream.line():
        if len(headers) >= _MAX_HEADERS:
            raise _BadReply(f"more than {_MAX_HEADERS} header fields")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():  # also an obsolete folded line: " more"
            raise _BadReply(f"a malformed header line {line[:80]!r}")
        name, value = name.lower(), value.strip()
        if name == "transfer-encoding" and name in headers:
            value = f"{headers[name]}, {value}"  # several fields are one comma-separated list
        elif name == "content-length" and headers.get(name, value) != value:
            raise _BadReply("two different Content-Length headers")
        headers[name] = value
    return status, headers


def _parse_status(line: bytes) -> int:
    version, _, rest = line.partition(b" ")
    code = rest.partition(b" ")[0]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise _BadReply(f"not an HTTP/1.1 status line: {line[:80]!r}")
    return int(code)


def _read_body(stream: _Stream, headers: dict[str, str]) -> bytes:
    encoding = headers.get("transfer-encoding")
    if encoding is not None:  # it outranks any Content-Length (RFC 9112 section 6.3)
        if [coding.strip().lower() for coding in encoding.split(",")] != ["chunked"]:
            raise _BadReply(f"an unsupported Transfer-Encoding {encoding[:40]!r}")  # nothing else was asked for
        return _read_chunked(stream)
    length = headers.get("content-length")
    if length is None:
        return stream.rest()  # Connection: close, so the end of the stream is the end of the body
    if not (length.isascii() and length.isdigit()):
        raise _BadReply(f"a malformed Content-Length {length[:40]!r}")
    return stream.exactly(int(length))


def _read_chunked(stream: _Stream) -> bytes:
    chunks = []
    while True:
        size_text = stream.line().partition(b";")[0].strip()  # chunk extensions: none we need
        if not size_text or size_text.strip(_HEX_DIGITS):  # int(_, 16) alone would take "0x1f", "-1", "1_0"
            raise _BadReply(f"a malformed chunk size {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        chunks.append(stream.exactly(size))
        if stream.line():
            raise _BadReply("a chunk longer than its size")
    while stream.line():  # trailer fields: none we need
        pass
    return b"".join(chunks)
