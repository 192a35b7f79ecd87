"""A local program cannot stop tokend serving the others: no body read before the request checks, no answer
before them, bounded request heads, a read timeout and a connection cap; and client keys that stay secret
(a key rewritten on disk is revoked at once; a key never goes to a TCP port when the daemon is on a socket).

All against the real daemon, with raw sockets where a well-behaved HTTP client would not misbehave enough.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.daemon import HEADERS, Daemon, LimitedDaemon, room_for, tokend_command, write_config
from tokend.api.connections import READ_TIMEOUT
from tokend.testing import FakeProviders

MiB = 1024 * 1024


def _connect(daemon: Daemon) -> socket.socket:
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the daemon sends before it closes the connection or goes quiet for `timeout` seconds."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    return received


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(received: bytes) -> int:
    assert received.startswith(b"HTTP/1.1 "), received[:200]
    return int(received[9:12])


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


# --- item 10: the checks come first, then a small body ---------------------------------------------------

@pytest.mark.parametrize("request_head", [
    # Felloh's key routes parse a JSON body: it used to be read whole before the 403.
    _head("POST", "/felloh/felloh/keys", f"Content-Length: {300 * MiB}", "Content-Type: application/json"),
    _head("POST", "/felloh/felloh/rotate", f"Content-Length: {300 * MiB}", "Content-Type: application/json"),
    # A cross-site form post: a web page may send it without a preflight.
    _head("POST", "/felloh/felloh/keys", f"Content-Length: {300 * MiB}", "Content-Type: text/plain",
          "Origin: http://attacker.example"),
    _head("POST", "/token/fts/refresh", f"Content-Length: {300 * MiB}", "Content-Type: text/plain"),
    _head("POST", "/felloh/felloh/keys", "Transfer-Encoding: chunked", "Content-Type: application/json"),
])
def test_a_request_that_fails_the_checks_is_refused_before_its_body_is_read(daemon_factory, request_head) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    with _connect(daemon) as sock:
        # A start of the body, then nothing: the answer must not wait for the rest.
        sock.sendall(request_head + (b"1\r\n{\r\n" if b"chunked" in request_head else b"{"))
        answer = _answer(sock)
    assert answer and _status(answer) == 403, answer[:300]
    assert b"connection: close" in answer.lower()  # the rest of the body is never read
    assert daemon.get("/token/fts").status_code == 200


def test_a_body_over_the_limit_is_refused_by_its_length_at_once_and_when_chunked_as_it_comes(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    announced = _head("POST", "/token/fts/refresh", "X-Tokend-Request: t", f"Content-Length: {300 * MiB}")
    with _connect(daemon) as sock:
        sock.sendall(announced)
        answer = _answer(sock)
    assert answer and _status(answer) == 413 and b'"too_large"' in answer, answer[:300]

    chunked = _head("POST", "/felloh/felloh/keys", "X-Tokend-Request: t", "Transfer-Encoding: chunked",
                    "Content-Type: application/json")
    with _connect(daemon) as sock:
        sock.sendall(chunked)
        chunk = b"x" * 16384
        for _ in range(8):  # 128 KiB, then the answer must come without the end of the body
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = _answer(sock)
    assert answer and _status(answer) == 413, answer[:300]

    # A small body is read as before.
    refreshed = daemon.post("/token/fts/refresh", json={"rejected": "not-the-current-token"})
    assert refreshed.status_code == 200


# --- item 16: no answer before the checks ---------------------------------------------------------------

def test_no_path_is_answered_before_the_request_checks(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    bare = httpx.Client(base_url=daemon.url, timeout=30, follow_redirects=False)
    try:
        # A trailing slash used to get a 307 whose Location came from the Host header; unknown paths a 404,
        # a wrong method a 405: each said something before the caller had shown it may ask.
        for method, path in (("GET", "/token/fts/"), ("GET", "/nope"), ("PUT", "/token/fts"),
                             ("GET", "/status/"), ("DELETE", "/reload"), ("GET", "/livez/")):
            answer = bare.request(method, path, headers={"Host": "evil.example"})
            assert answer.status_code == 403 and "location" not in answer.headers, (method, path, answer.text)
            assert bare.request(method, path).status_code == 403
        # Past the checks: the usual answers, and still no redirect.
        assert bare.get("/token/fts/", headers=HEADERS).status_code == 404
        assert bare.get("/nope", headers=HEADERS).status_code == 404
        # The probes need no header.
        for path in ("/livez", "/readyz", "/metrics"):
            assert bare.get(path).status_code == 200
    finally:
        bare.close()


# --- item 11: connections --------------------------------------------------------------------------------

@pytest.fixture
def limited_daemon(tmp_path, fakes: FakeProviders):  # type: ignore[no-untyped-def]
    daemon = LimitedDaemon(write_config(tmp_path, fakes), log_path=tmp_path / "daemon.log", open_files=1024)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()


def _latencies(daemon: Daemon, count: int) -> list[float]:
    """Seconds each of `count` new clients took to get a token, each on a connection of its own."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        answer = httpx.get(daemon.url + "/token/fts", headers=HEADERS, timeout=10)
        took.append(time.monotonic() - started)
        assert answer.status_code == 200, answer.text
    return took


def test_a_flood_of_idle_and_half_sent_connections_leaves_other_clients_served(limited_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = limited_daemon
    room_for(1500)
    normal = statistics.median(_latencies(daemon, 30))
    flood: list[socket.socket] = []
    try:
        for index in range(1100):  # more than the daemon has descriptors for
            sock = socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])), timeout=10)
            if index % 2:  # half of them send half a request, and then nothing
                sock.sendall(b"GET /token/fts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-")
            flood.append(sock)
        during = _latencies(daemon, 30)
    finally:
        for sock in flood:
            sock.close()
    # Generous: a busy CI machine; before the cap, these clients waited until the flood went away.
    assert max(during) < 2.0, during
    assert statistics.median(during) < normal * 5 + 0.05, (normal, during)
    assert daemon.process is not None and daemon.process.poll() is None


def test_idle_and_half_sent_connections_are_closed_after_the_read_timeout(limited_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = limited_daemon
    port = int(daemon.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    started = time.monotonic()
    try:
        for sock in slow:
            sock.sendall(b"POST /token/fts/refresh HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stop = threading.Event()

        def trickle() -> None:  # a byte now and then: each one used to put off any timeout
            while not stop.wait(1.0):
                for sock in slow:
                    with contextlib.suppress(OSError):  # closed by the daemon already
                        sock.send(b"X")

        dripping = threading.Thread(target=trickle, daemon=True)
        dripping.start()
        try:
            for sock in idle + slow:
                sock.settimeout(READ_TIMEOUT + 20)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(65536):  # until the end of the stream: closed by the daemon
                        pass
        finally:
            stop.set()
            dripping.join()
    finally:
        for sock in idle + slow:
            sock.close()
    took = time.monotonic() - started
    assert READ_TIMEOUT - 1 <= took < READ_TIMEOUT + 15, took


def _send_until_closed(daemon: Daemon, head: bytes, filler: Callable[[], bytes], limit: int) -> tuple[int, bytes]:
    """Send `head`, then `filler()` chunks until the daemon closes the connection, `limit` bytes went out,
    or `filler()` has no more."""
    sent = 0
    with _connect(daemon) as sock:
        sock.sendall(head)
        try:
            while sent < limit and (chunk := filler()):
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent, _answer(sock, timeout=2)


def test_a_huge_header_or_too_many_header_fields_are_refused_without_the_daemon_growing(limited_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = limited_daemon
    before = daemon.peak_memory()
    big = b"x" * 65536
    sent, answer = _send_until_closed(
        daemon, b"GET /token/fts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: t\r\nX-Big: ", lambda: big,
        256 * MiB)
    assert sent < 32 * MiB, f"{sent} bytes of one header went in before the daemon closed the connection"
    assert not answer or _status(answer) == 431, answer[:200]

    # 200,000 fields (2.3 MB: the kernel's buffers may take it all before the daemon has read a little),
    # then the end of the head: the answer used to be a 200.
    many = iter([*(b"".join(b"X-F%d: v\r\n" % i for i in range(start, start + 5000))
                   for start in range(0, 200_000, 5000)), b"\r\n"])
    sent, answer = _send_until_closed(
        daemon, b"GET /token/fts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: t\r\n",
        lambda: next(many, b""), 4 * MiB)
    assert not answer or _status(answer) == 431, answer[:200]

    # Fewer fields, all at once: refused with a 431 (the daemon reads all of it before answering).
    with _connect(daemon) as sock:
        sock.sendall(b"GET /token/fts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: t\r\n"
                     + b"".join(b"X-F%d: v\r\n" % i for i in range(200)) + b"\r\n")
        assert _status(_answer(sock)) == 431

    assert daemon.peak_memory() - before < 64 * MiB, (before, daemon.peak_memory())
    assert daemon.get("/token/fts").status_code == 200


# --- item 15: a client key rewritten on disk is revoked at once -----------------------------------------

OLD_KEY = "old-app-key-0123456789-abcdefgh"
NEW_KEY = "new-app-key-9876543210-hgfedcba"
OPS_KEY = "ops-key-0123456789-zyxwvutsrqpo"


def _client_tables(tmp_path: Path) -> str:
    for name, key in (("app_key", OLD_KEY), ("ops_key", OPS_KEY)):
        (tmp_path / name).write_text(key + "\n")
        (tmp_path / name).chmod(0o600)
    return f"""
[clients.app]
key = {{ file = "{tmp_path / 'app_key'}" }}
providers = ["fts"]

[clients.ops]
key = {{ file = "{tmp_path / 'ops_key'}" }}
providers = ["fts", "felloh"]
"""


def _asks(daemon: Daemon, key: str | None) -> tuple[int, int, int]:
    """What a caller with `key` gets from the fast path, the full route (raw format is the fast one) and /status."""
    headers = {**HEADERS, **({"Authorization": f"Bearer {key}"} if key else {})}
    bare = httpx.Client(base_url=daemon.url, timeout=30, headers=headers)
    try:
        return (bare.get("/token/fts?format=raw").status_code, bare.get("/token/fts?format=json&x=1").status_code,
                bare.get("/status").status_code)
    finally:
        bare.close()


def test_a_client_key_file_rewritten_on_disk_revokes_the_old_key_at_once(daemon_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(extra=_client_tables(tmp_path))
    assert _asks(daemon, OLD_KEY) == (200, 200, 200)

    (tmp_path / "app_key").write_text(NEW_KEY + "\n")  # rewritten in place, as an editor or a script does
    daemon.wait_until(lambda: _asks(daemon, OLD_KEY) == (401, 401, 401), timeout=15, what="the old key refused")
    assert _asks(daemon, NEW_KEY) == (200, 200, 200)
    assert _asks(daemon, OPS_KEY) == (200, 200, 200)  # the other clients are left as they were

    # A file that cannot be used (too short a key, here) locks its client out: neither key works, and no
    # request without a key gets in (the API is never opened to anyone for want of a client).
    (tmp_path / "app_key").write_text("short\n")
    daemon.wait_until(lambda: _asks(daemon, NEW_KEY) == (401, 401, 401), timeout=15, what="the client locked out")
    assert _asks(daemon, "short") == (401, 401, 401)
    assert _asks(daemon, None) == (401, 401, 401)
    assert _asks(daemon, OPS_KEY) == (200, 200, 200)

    # The same key as another client is refused too; then a good one is taken.
    (tmp_path / "app_key").write_text(OPS_KEY + "\n")
    daemon.wait_until(lambda: "the same key as another client" in daemon.log(), timeout=15, what="the duplicate")
    assert _asks(daemon, OPS_KEY) == (200, 200, 200)
    assert httpx.get(daemon.url + "/status", headers={**HEADERS, "Authorization": f"Bearer {OPS_KEY}"},
                     timeout=30).json()["providers"].keys() == {"fts", "felloh"}  # still ops, not app
    (tmp_path / "app_key").write_text(OLD_KEY + "-again\n")
    daemon.wait_until(lambda: _asks(daemon, OLD_KEY + "-again") == (200, 200, 200), timeout=15, what="a good key")

    log = daemon.log()
    assert "client=app key file" in log
    assert not [key for key in (OLD_KEY, NEW_KEY, OPS_KEY, "short") if key in log]


# --- item 17: a client key never goes to a TCP port when the daemon is on a unix socket ------------------

def test_the_client_key_is_not_sent_to_a_port_when_the_config_names_a_socket(tmp_path, fakes: FakeProviders) -> None:
    config = write_config(tmp_path, fakes)
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nsocket = "{tmp_path / "t.sock"}"\n'))
    squatter = socket.create_server(("127.0.0.1", 0))  # a program that took a port clients might be sent to
    squatter.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                peer, _ = squatter.accept()
            except TimeoutError:
                continue
            with peer:
                peer.settimeout(5)
                received.append(peer.recv(65536))

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    url = f"http://127.0.0.1:{squatter.getsockname()[1]}"
    try:
        for how in (["--url", url], []):
            env = {**os.environ, "TOKEND_CLIENT_KEY": OLD_KEY, **({} if how else {"TOKEND_URL": url})}
            result = subprocess.run(tokend_command("--config", str(config), "get", "fts", *how), env=env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1, result
            assert "refusing to send the client key" in result.stderr and "Traceback" not in result.stderr
            assert OLD_KEY not in result.stdout + result.stderr
    finally:
        stop.set()
        collector.join()
        squatter.close()
    assert received == []


def test_the_systemd_unit_leaves_room_for_every_connection() -> None:
    from tokend.api.connections import FD_RESERVE, MAX_CONNECTIONS

    unit = (Path(__file__).parent.parent / "deploy" / "systemd" / "tokend.service").read_text()
    limits = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0]) >= MAX_CONNECTIONS + FD_RESERVE, limits


def test_streamed_paths_are_checked_but_not_capped() -> None:
    """For a route that passes bodies on as they come (a proxy), in-process: the checks, but no cap here."""
    import asyncio

    from tokend.api.guard import RequestGuard
    from tokend.api.limits import BODY_LIMIT, RequestLimits
    from tokend.config.tables import ServerConfig

    async def echo_size(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        size, more = 0, True
        while more:
            message = await receive()
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    app = RequestLimits(echo_size, RequestGuard(ServerConfig()), streamed=("/proxy/",))

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"x" * BODY_LIMIT

    async def post(path: str, headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post(path, content=chunks(), headers=headers)

    streamed = asyncio.run(post("/proxy/api/upload", HEADERS))
    assert streamed.status_code == 200 and streamed.text == str(4 * BODY_LIMIT)
    assert asyncio.run(post("/felloh/felloh/keys", HEADERS)).status_code == 413
    assert asyncio.run(post("/proxy/api/upload", {})).status_code == 403
