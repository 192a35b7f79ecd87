"""How a proxied request is read and answered: uvicorn's request cycle, with a leaner `receive` and `send`.

uvicorn writes an answer's head as soon as the app starts it, then each piece of body on its own: two writes,
two system calls and often two packets for the typical proxied answer, whose body arrives with its head. This
cycle holds the head until the first piece of body and writes both at once (without copying a large body to
do so). It also skips uvicorn's per-header checks: the headers it is given are tokend's own or an upstream's,
which llhttp has already checked field by field (a name is a token; a value holds no CR, LF or NUL).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

__all__ = ["ProxyCycle"]

COPY_BELOW = 16 * 1024  # a smaller body is joined to its head; a larger one is written beside it (writev)


class ProxyCycle(RequestResponseCycle):
    _head: bytes | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The request body as it came, piece by piece: uvicorn grows one bytearray with each piece and copies
        # it again to hand it over, twice the copying of a body that may be a gigabyte.
        self.pieces: list[bytes] = []
        self.size = 0

    def add_body(self, body: bytes) -> bool:
        """Keep a piece of the request body; True when enough waits for reading to pause."""
        self.pieces.append(body)
        self.size += len(body)
        self.message_event.set()
        return self.size > HIGH_WATER_LIMIT  # as uvicorn: larger buffers measured slower (more copying)

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.pieces
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.size = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            self._head = self._render(message["status"], message.get("headers", ()))
            return
        if self.response_complete or message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' for the answer.")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        self._write(self._framed(body, more_body))
        if not more_body:
            if not self.chunked_encoding and self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _render(self, status: int, headers: Any) -> bytes:
        content = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            content.append(b"%b: %b\r\n" % (name, value))
        for name, value in headers:
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value)
                self.chunked_encoding = False
            content.append(b"%b: %b\r\n" % (name, value))
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _framed(self, body: bytes, more_body: bool) -> list[bytes]:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            return []
        if self.chunked_encoding:
            pieces = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                pieces.append(b"0\r\n\r\n")
            return pieces
        self.expected_content_length -= len(body)
        if self.expected_content_length < 0:
            raise RuntimeError("Response content longer than Content-Length")
        return [body]

    def _write(self, pieces: list[bytes]) -> None:
        head, self._head = self._head, None
        if head is not None:
            pieces.insert(0, head)
        if not pieces:
            return
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        elif sum(map(len, pieces)) < COPY_BELOW:
            self.transport.write(b"".join(pieces))
        else:
            self.transport.writelines(pieces)
