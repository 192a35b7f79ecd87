"""The CLI's HTTP client (tokend.api.client): against the real daemon, against a server that answers in
scripted bytes (chunked, split at odd places, cut short, garbage), and what `tokend get` imports."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

from tests.daemon import free_port, tokend_command, write_config
from tokend.api import request_signing as signed
from tokend.api.client import Client, Reply
from tokend.config.discovery import Address
from tokend.errors import DaemonUnavailable, TokendError
from tokend.testing import FakeProviders, FakeServer

# --- against the real daemon -----------------------------------------------------------------------------


def test_get_refresh_and_errors_against_the_daemon(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    client = Client(Address(daemon.url))

    reply = client.request("GET", "/token/felloh")
    assert reply.status == 200 and reply.json()["provider"] == "felloh"
    assert fakes.felloh.is_valid(reply.json()["token"])
    raw = client.request("GET", "/token/felloh?format=raw")
    assert (raw.status, raw.body.decode()) == (200, reply.json()["token"])

    refreshed = client.request("POST", "/token/felloh/refresh")  # no body: sent with Content-Length: 0
    assert refreshed.status == 200 and fakes.felloh.is_valid(refreshed.json()["token"])

    unknown = client.request("GET", "/token/nope")
    assert (unknown.status, unknown.error_code) == (404, "unknown_provider")
    assert unknown.error_message() == "No provider named 'nope' is configured."
    assert client.request("GET", "/status").json()["ready"] is True


def test_localhost_tries_each_address_and_sends_an_accepted_host(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    port = daemon.url.rsplit(":", 1)[1]
    # `localhost` may resolve to ::1 first, where the daemon (on 127.0.0.1) refuses: the next address is tried.
    reply = Client(Address(f"http://localhost:{port}")).request("GET", "/token/flotiq")
    assert reply.status == 200, reply.body  # a Host the daemon refuses would be a 403


def test_the_daemon_on_a_unix_socket(tmp_path, fakes: FakeProviders) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tokend-") as short:  # a socket path must fit in 108 bytes
        path = f"{short}/tokend.sock"
        config = write_config(tmp_path, fakes)
        text = re.sub(r'host = "127.0.0.1"\nport = \d+\n', f'socket = "{path}"\n', config.read_text())
        config.write_text(text)
        client = Client(Address(f"unix:{path}", path))
        with (tmp_path / "daemon.log").open("wb") as log:
            process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: _status_or_none(client, "/readyz") == 200, process)
            reply = client.request("GET", "/token/fts")
            assert reply.status == 200 and fakes.fintech_studios.is_valid(reply.json()["token"])
        finally:
            process.terminate()
            process.wait(timeout=15)


def test_get_imports_no_framework_nor_heavy_standard_library(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    command = [sys.executable, "-X", "importtime", *tokend_command("get", "felloh", "--url", daemon.url)[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == daemon.get("/token/felloh").json()["token"]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tokend.api.client" in imported  # the parse found the imports
    heavy = {"fastapi", "starlette", "pydantic", "pydantic_core", "httpx", "httpcore", "anyio", "uvicorn",
             "apscheduler", "asyncio", "http", "http.client", "email", "ssl", "dataclasses", "inspect",
             # raw, the default, is asked for as text: no JSON to parse; and --url needs no config file
             "json", "tomllib"}
    assert sorted(imported & heavy) == []


# --- against scripted bytes ------------------------------------------------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
BODY = b'{"provider": "x", "token": "t0k3n"}'


def _split_everywhere(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


GOOD_ANSWERS = {
    "content-length": ([OK_HEAD + b"content-length: 35\r\n\r\n" + BODY], BODY),
    "content-length, byte by byte": (_split_everywhere(OK_HEAD + b"content-length: 35\r\n\r\n" + BODY), BODY),
    "chunked, with extensions and trailers": (
        [OK_HEAD + b"transfer-encoding: chunked\r\n\r\n", b"a;ext=1\r\n", BODY[:10], b"\r\n19\r\n" + BODY[10:],
         b"\r\n0\r\nx-trailer: 1\r\n\r\n"], BODY),
    "chunked, byte by byte": (
        _split_everywhere(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1F\r\n" + BODY[:31] + b"\r\n4\r\n" + BODY[31:]
                          + b"\r\n0\r\n\r\n"), BODY),
    "chunked outranks content-length": (
        [OK_HEAD + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n23\r\n" + BODY + b"\r\n0\r\n\r\n"], BODY),
    "to the end of the stream": ([OK_HEAD + b"\r\n" + BODY[:5], BODY[5:]], BODY),
    "bare LF line endings": ([b"HTTP/1.1 200 OK\ncontent-length: 35\n\n" + BODY], BODY),
    "an interim 100 first": ([b"HTTP/1.1 100 Continue\r\n\r\n", OK_HEAD + b"content-length: 35\r\n\r\n" + BODY], BODY),
    "204 has no body": ([b"HTTP/1.1 204 No Content\r\n\r\n"], b""),
    "HTTP/1.0, no reason phrase": ([b"HTTP/1.0 200\r\ncontent-length: 2\r\n\r\n{}"], b"{}"),
}


@pytest.mark.parametrize("pieces, body", GOOD_ANSWERS.values(), ids=GOOD_ANSWERS.keys())
def test_reads_every_shape_of_a_valid_answer(serve_bytes, pieces: list[bytes], body: bytes) -> None:  # type: ignore[no-untyped-def]
    server = serve_bytes(*pieces)
    reply = Client(server.address).request("GET", "/token/x")
    assert (reply.status, reply.body) == ((204 if body == b"" else 200), body)


BAD_ANSWERS = {
    "closed at once": ([], "closed before any answer"),
    "closed in the head": ([b"HTTP/1.1 200 OK\r\ncontent-"], "closed in the middle of the answer"),
    "body cut short": ([OK_HEAD + b"content-length: 35\r\n\r\n" + BODY[:20]], "ended after 20 of 35 body bytes"),
    "chunked cut short": ([OK_HEAD + b"transfer-encoding: chunked\r\n\r\n23\r\n" + BODY[:9]], "ended after 9 of 35"),
    "not HTTP": ([b"SSH-2.0-OpenSSH_9.6\r\n"], "not an HTTP/1.1 status line"),
    "HTTP/2 preface": ([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], "not an HTTP/1.1 status line"),
    "bad header": ([b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n"], "malformed header line"),
    "two lengths": ([OK_HEAD + b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}"], "two different Content-Length"),
    "bad length": ([OK_HEAD + b"content-length: -2\r\n\r\n{}"], "malformed Content-Length"),
    "hex-looking chunk size": ([OK_HEAD + b"transfer-encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n"], "chunk size"),
    "negative chunk size": ([OK_HEAD + b"transfer-encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n"], "chunk size"),
    "chunk longer than its size": ([OK_HEAD + b"transfer-encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n"], "longer"),
    "gzip": ([OK_HEAD + b"transfer-encoding: gzip, chunked\r\n\r\n"], "unsupported Transfer-Encoding"),
    "switching protocols": ([b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], "protocol switch"),
    "endless line": ([b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000], "longer than 64 KiB"),
}


@pytest.mark.parametrize("pieces, message", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_broken_answer_is_a_clear_error(serve_bytes, pieces: list[bytes], message: str) -> None:  # type: ignore[no-untyped-def]
    server = serve_bytes(*pieces)
    with pytest.raises(DaemonUnavailable, match=re.escape(message)) as caught:
        Client(server.address).request("GET", "/token/x")
    assert caught.value.message.startswith(f"tokend at {server.address.url} ")


def test_the_request_on_the_wire(serve_bytes) -> None:  # type: ignore[no-untyped-def]
    server = serve_bytes(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}")
    reply = Client(server.address, client_key="ck-123").request("POST", "/felloh/f/keys", {"name": "n"})
    assert reply.status == 201
    head, _, body = server.request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /felloh/f/keys HTTP/1.1"
    port = server.address.url.rsplit(":", 1)[1]
    assert {f"Host: 127.0.0.1:{port}", "X-Tokend-Request: cli", "Connection: close",
            "Content-Type: application/json", "Content-Length: 13"} <= set(lines)
    assert body == b'{"name": "n"}'
    # The key signs the request and is never sent: whoever answered learns a signature for this request.
    assert b"ck-123" not in server.request
    (authorization,) = [line for line in lines if line.startswith("Authorization: ")]
    request = signed.parse(authorization.removeprefix("Authorization: Tokend-HMAC ").encode())
    assert request is not None and request.client == signed.key_id("ck-123")
    assert request.valid("ck-123", "POST", "/felloh/f/keys", time.time())


def test_no_authorization_without_a_client_key(serve_bytes) -> None:  # type: ignore[no-untyped-def]
    server = serve_bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    Client(server.address).request("GET", "/status")
    assert b"authorization" not in server.request.lower()


@pytest.mark.parametrize("key", ["", "two\nlines", "a\r\nX-Injected: 1", "caf\u00e9"])
def test_a_client_key_that_cannot_be_a_header_is_refused(key: str) -> None:
    with pytest.raises(TokendError, match="client key"):
        Client(Address("http://127.0.0.1:1"), client_key=key)


def test_uvicorn_answering_chunked_is_read_whole() -> None:
    # uvicorn answers chunked, even to `Connection: close`, whenever an app streams without a length.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"a": ', "more_body": True})
        await send({"type": "http.response.body", "body": b"1}"})

    with FakeServer(app) as server:
        assert Client(Address(server.url)).request("GET", "/").json() == {"a": 1}


# --- when there is no answer -----------------------------------------------------------------------------


def test_nothing_listening_is_not_running() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DaemonUnavailable) as caught:
        Client(Address(url)).request("GET", "/status")
    assert caught.value.message == f"tokend is not running at {url} (connection refused); start it with `tokend run`"


def test_a_missing_unix_socket_is_not_running(tmp_path: Path) -> None:
    path = str(tmp_path / "none.sock")
    with pytest.raises(DaemonUnavailable, match=re.escape(f"tokend is not running at unix:{path} (connection")):
        Client(Address(f"unix:{path}", path)).request("GET", "/status")


def test_a_silent_daemon_times_out(serve_bytes) -> None:  # type: ignore[no-untyped-def]
    server = serve_bytes(b"HTTP/1.1 200 OK\r\n", hang=True)  # a head begun, never finished
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=re.escape(f"tokend at {server.address.url} did not answer in 0.3s")):
        Client(server.address, timeout=0.3).request("GET", "/status")
    assert time.monotonic() - started < 2


def test_a_trickling_answer_still_ends_at_the_deadline(serve_bytes) -> None:  # type: ignore[no-untyped-def]
    # Each byte comes well within the timeout, but the whole answer would not: the deadline is for all of it.
    server = serve_bytes(*_split_everywhere(OK_HEAD + b"content-length: 35\r\n\r\n" + BODY), pause=0.05)
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=re.escape("did not answer in 0.5s")):
        Client(server.address, timeout=0.5).request("GET", "/status")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("url", ["https://127.0.0.1:8765", "http://:8765", "http://127.0.0.1:99999", "ftp://x"])
def test_a_url_that_is_no_daemon_is_refused_before_connecting(url: str) -> None:
    with pytest.raises(DaemonUnavailable, match="is not an http:// URL of a tokend daemon"):
        Client(Address(url)).request("GET", "/status")


def test_reply_error_helpers_survive_any_body() -> None:
    assert Reply(502, b"<html>Bad Gateway</html>").error_message() == "the daemon answered 502"
    assert Reply(502, b"\xff\xfe").error_code is None
    assert Reply(401, b'{"error": "unauthorized", "message": "A client key is required."}').error_code == "unauthorized"
    assert Reply(500, b'["a list"]').error_message() == "the daemon answered 500"


# --- helpers ---------------------------------------------------------------------------------------------


class _ScriptedServer:
    """Accepts one connection on 127.0.0.1, reads the request, answers with `pieces` (a short pause after
    each, so that the client's reads see them apart), then closes; or, with `hang`, waits to be stopped."""

    def __init__(self, pieces: tuple[bytes, ...], *, pause: float, hang: bool) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.address = Address(f"http://127.0.0.1:{self._listener.getsockname()[1]}")
        self._pieces, self._pause, self._hang = pieces, pause, hang
        self._stop = threading.Event()
        self.request = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(10)
            try:
                self.request = _read_request(connection)
                for piece in self._pieces:
                    connection.sendall(piece)
                    if self._stop.wait(self._pause):
                        return
            except OSError:  # the client gave up first (a timeout test): nothing left to answer
                return
            if self._hang:
                self._stop.wait(30)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=10)


@pytest.fixture
def serve_bytes() -> Iterator[Callable[..., _ScriptedServer]]:
    servers: list[_ScriptedServer] = []

    def start(*pieces: bytes, pause: float = 0.002, hang: bool = False) -> _ScriptedServer:
        servers.append(_ScriptedServer(pieces, pause=pause, hang=hang))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", data)
    head_size = data.index(b"\r\n\r\n") + 4
    while length and len(data) < head_size + int(length[1]):
        data += connection.recv(65536)
    return data


def _status_or_none(client: Client, path: str) -> int | None:
    try:
        return client.request("GET", path).status
    except DaemonUnavailable:
        return None


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"tokend exited with {process.returncode}"
        assert time.monotonic() < deadline, "tokend did not become ready"
        time.sleep(0.05)


def test_a_config_that_is_not_utf8_is_the_same_sentence_for_every_command(tmp_path: Path) -> None:
    config = tmp_path / "tokend.toml"
    config.write_bytes(b"# caf\xe9\n[server]\nport = 9000\n")
    said = {}
    for command in (["check"], ["get", "fts"], ["status"], ["reload"], ["refresh", "fts"]):
        result = subprocess.run(tokend_command("--config", str(config), *command), capture_output=True, text=True,
                                timeout=60)
        assert (result.returncode, result.stdout) == (3, ""), (command, result)
        assert "Traceback" not in result.stderr
        said[command[0]] = result.stderr
    assert set(said.values()) == {f"tokend: {config} is not UTF-8 text (byte 6 is not); TOML files are UTF-8, "
                                  "comments included\n"}
