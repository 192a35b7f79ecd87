"""The proxy against upstreams that misbehave: what they send is framed by a real HTTP parser, bounded in memory
and descriptors, and never becomes another client's answer.

The upstream is a small asyncio server in a thread of the test that writes raw bytes, chosen by the request's
path; the daemon is the real one as a subprocess, with the open-files limit systemd gives a service (1024).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import LimitedDaemon, free_port, room_for
from tests.test_proxy import raw_request

MiB = 1 << 20
PROVIDER = "raw"
OPEN_FILES = 1024  # systemd's default for a service

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class RawUpstream:
    """An HTTP/1.1 server that answers each request as `behaviours[path]` writes it, byte for byte. A behaviour
    returns whether the connection may carry another request. It counts connections, open and in all."""

    def __init__(self, behaviours: dict[bytes, Handler]) -> None:
        self._behaviours = behaviours
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.connections = self.open = self.peak_open = 0
        self.requests: list[bytes] = []
        self.port = 0

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048), self._loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                path = head.split(b" ", 2)[1]
                self.requests.append(path)
                if not await self._behaviours[path](reader, writer, path):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, KeyError):
            pass
        finally:
            self.open -= 1
            writer.close()


def _ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%b\r\n%b" % (
        len(body), b"".join(line + b"\r\n" for line in extra), body)


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(_ok(b"answer to " + path))
    await writer.drain()
    return True


async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    await asyncio.sleep(1.0)
    return await ok(reader, writer, path)


async def _flood(writer: asyncio.StreamWriter, head: bytes, piece: bytes, size: int) -> bool:
    """`head`, then `size` bytes of `piece`s, for as long as the peer takes them."""
    writer.write(head)
    with contextlib.suppress(ConnectionError):
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
    return False


async def negative_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    return await _flood(writer, b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", b"x" * MiB, 200 * MiB)


async def negative_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    return await _flood(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", b"x" * MiB, 200 * MiB)


async def close_soon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(_ok(b"closing", b"Connection: close"))
    await writer.drain()
    await asyncio.sleep(0.3)  # the upstream said it would close, and does, a little later
    return False


async def two_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n" + _ok(b"smuggled"))
    await writer.drain()
    return True


async def extra_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(_ok(b"answer to " + path))
    await writer.drain()
    await asyncio.sleep(0.2)  # the connection is back in the pool by now
    writer.write(_ok(b"smuggled"))
    await writer.drain()
    return True


async def chunked_and_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    await writer.drain()
    return True


async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + _ok(b"after the hints"))
    await writer.drain()
    return True


async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> bool:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00")
    await writer.drain()
    return True


BEHAVIOURS: dict[bytes, Handler] = {
    b"/interim": interim, b"/switch": switch, b"/extra-later": extra_later,
    b"/ok": ok, b"/second": ok, b"/slow": slow, b"/negative-length": negative_length,
    b"/negative-chunk": negative_chunk, b"/close-soon": close_soon, b"/two-answers": two_answers,
    b"/chunked-and-length": chunked_and_length,
}


def _config(directory: Path, upstream: int, key: str) -> Path:
    (directory / "key").write_text(key + "\n", encoding="utf-8")
    (directory / "key").chmod(0o600)  # tokend runs no config whose secret files other users can read
    config = directory / "tokend.toml"
    config.write_text(f"""[server]
host = "127.0.0.1"
port = {free_port()}

[providers.{PROVIDER}]
kind = "static"
key = {{ file = "{directory / 'key'}" }}
api_url = "http://127.0.0.1:{upstream}"
proxy = true
connect_timeout = 20
read_timeout = 20
""")
    return config


@contextlib.contextmanager
def _world(directory: Path, key: str = "raw-static-key-0123456789") -> Iterator[tuple[RawUpstream, LimitedDaemon]]:
    with RawUpstream(BEHAVIOURS) as upstream:
        daemon = LimitedDaemon(_config(directory, upstream.port, key), log_path=directory / "daemon.log",
                               open_files=OPEN_FILES)
        try:
            daemon.start()
            yield upstream, daemon
        finally:
            daemon.kill()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[RawUpstream, LimitedDaemon]]:
    with _world(tmp_path) as both:
        yield both


def _proxied(daemon: LimitedDaemon, path: str, method: str = "GET", **kwargs: object) -> tuple[int, dict[str, str]]:
    answer = daemon.client.request(method, f"/proxy/{PROVIDER}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]
    return answer.status_code, answer.json() if answer.headers.get("content-type") == "application/json" else {
        "text": answer.text}


def _no_traceback(daemon: LimitedDaemon) -> None:
    assert "Traceback" not in daemon.log(), daemon.log()[-3000:]


# --- framing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/negative-length", "/negative-chunk"])
def test_a_negative_length_is_refused_and_its_body_never_buffered(world: tuple[RawUpstream, LimitedDaemon],
                                                                   path: str) -> None:
    _, daemon = world
    assert _proxied(daemon, "/ok")[0] == 200  # the data path loaded once: what grows after is the answer's
    before = daemon.peak_memory()
    status, body = _proxied(daemon, path)
    assert (status, body.get("error")) == (502, "upstream_unreachable"), body
    assert "cannot frame" in body["message"], body
    grown = daemon.peak_memory() - before
    assert grown < 16 * MiB, f"peak memory grew {grown / MiB:.0f} MiB"
    assert _proxied(daemon, "/ok") == (200, {"text": "answer to /ok"})
    _no_traceback(daemon)


def test_an_upstream_that_says_connection_close_is_never_asked_again_on_that_connection(
        world: tuple[RawUpstream, LimitedDaemon]) -> None:
    upstream, daemon = world
    before = upstream.connections
    # POSTs: not idempotent, so never retried on another connection; each must get a connection of its own.
    statuses = [_proxied(daemon, "/close-soon", "POST", json={"n": n})[0] for n in range(20)]
    assert statuses == [200] * 20
    assert upstream.connections - before == 20


@pytest.mark.parametrize("first", ["/two-answers", "/extra-later"])
def test_bytes_after_an_answer_never_become_the_next_clients_answer(world: tuple[RawUpstream, LimitedDaemon],
                                                                    first: str) -> None:
    upstream, daemon = world
    assert _proxied(daemon, first)[0] in (200, 204)
    time.sleep(0.5)  # the extra bytes have come, while the connection waited in the pool
    for _ in range(3):
        assert _proxied(daemon, "/second") == (200, {"text": "answer to /second"})
    assert upstream.requests.count(b"/second") == 3


def test_transfer_encoding_beside_content_length_is_refused(world: tuple[RawUpstream, LimitedDaemon]) -> None:
    _, daemon = world
    started = time.monotonic()
    status, body = _proxied(daemon, "/chunked-and-length")
    assert (status, body.get("error")) == (502, "upstream_unreachable"), body
    assert "Content-Length can't be present with Transfer-Encoding" in body["message"]
    assert time.monotonic() - started < 5  # an answer, not a client left waiting for 95 more bytes
    assert _proxied(daemon, "/ok")[0] == 200
    _no_traceback(daemon)


def test_interim_answers_are_skipped_and_a_protocol_switch_refused(world: tuple[RawUpstream, LimitedDaemon]) -> None:
    _, daemon = world
    assert _proxied(daemon, "/interim") == (200, {"text": "after the hints"})
    status, body = _proxied(daemon, "/switch")
    assert (status, body.get("error")) == (502, "upstream_unreachable"), body
    assert _proxied(daemon, "/ok")[0] == 200
    _no_traceback(daemon)


# --- the credential --------------------------------------------------------------------------------------------


def test_a_token_no_header_can_carry_is_a_clear_503_decided_once(tmp_path: Path) -> None:
    with _world(tmp_path, key="key-with-a-\u20ac-sign") as (upstream, daemon):
        token = daemon.get(f"/token/{PROVIDER}")
        assert token.status_code == 200 and token.json()["token"] == "key-with-a-\u20ac-sign"
        for _ in range(3):
            status, body = _proxied(daemon, "/ok")
            assert (status, body.get("error")) == (503, "token_unavailable"), body
            assert "Latin-1" in body["message"] and "\u20ac" not in body["message"]
        assert upstream.connections == 0
        assert daemon.log().count("outside Latin-1") == 1  # decided once for the credential, not per request
        _no_traceback(daemon)


# --- descriptors ---------------------------------------------------------------------------------------------


async def _raw_get(port: int, path: str, *, hold: asyncio.Event | None = None) -> int:
    """One request on a connection of its own; its status, or 0 when the connection was reset or closed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: 1\r\n"
                     f"Connection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 60)
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()


def _port(daemon: LimitedDaemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


def test_six_hundred_slow_proxied_requests_leave_token_answering(world: tuple[RawUpstream, LimitedDaemon]) -> None:
    upstream, daemon = world
    room_for(4096)
    port = _port(daemon)

    async def flood() -> tuple[list[int], list[int]]:
        proxied = [asyncio.ensure_future(_raw_get(port, f"/proxy/{PROVIDER}/slow")) for _ in range(600)]
        await asyncio.sleep(0.5)  # the flood is in: every upstream connection the budget allows is taken
        tokens = [await _raw_get(port, f"/token/{PROVIDER}") for _ in range(5)]
        return list(await asyncio.gather(*proxied)), tokens

    proxied, tokens = asyncio.run(flood())
    assert tokens == [200] * 5
    assert proxied == [200] * 600, {status: proxied.count(status) for status in set(proxied)}
    assert upstream.peak_open <= (OPEN_FILES - 128) // 4  # the proxy's share of the descriptors
    _no_traceback(daemon)


def test_idle_upstream_connections_are_bounded_and_closed_after_a_while(
        world: tuple[RawUpstream, LimitedDaemon]) -> None:
    upstream, daemon = world
    room_for(4096)
    port = _port(daemon)

    async def burst() -> list[int]:
        return list(await asyncio.gather(*(_raw_get(port, f"/proxy/{PROVIDER}/slow") for _ in range(300))))

    assert asyncio.run(burst()) == [200] * 300
    assert upstream.peak_open > 32
    daemon.wait_until(lambda: upstream.open <= 32, timeout=5, what="idle connections beyond 32 per origin closed")

    async def idle_clients_then_token() -> int:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(950)]
        try:
            return await _raw_get(port, f"/token/{PROVIDER}")
        finally:
            for _, writer in idle:
                writer.close()

    assert asyncio.run(idle_clients_then_token()) == 200
    daemon.wait_until(lambda: upstream.open == 0, timeout=15, what="idle upstream connections closed")


# --- the checks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/proxy/", b"/proxy//x"])
def test_a_proxy_path_without_a_provider_is_checked_first(world: tuple[RawUpstream, LimitedDaemon],
                                                          path: bytes) -> None:
    _, daemon = world
    port = _port(daemon)
    assert raw_request(port, b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)[0] == 403
    assert raw_request(port, b"GET %b HTTP/1.1\r\nHost: evil\r\nX-Tokend-Request: 1\r\n\r\n" % path)[0] == 403
    assert raw_request(port, b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: 1\r\n\r\n" % path)[0] == 404
