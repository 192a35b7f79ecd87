"""tokend_client.Client against the real daemon: finding it, the cache, the connection, refresh, client keys,
and each error as the exception of its code."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.daemon import Daemon, free_port
from tokend.testing import FakeProviders, FakeServer
from tokend_client_stack import Stack, start_daemon

from tokend_client import (
    Client,
    DaemonUnreachable,
    Forbidden,
    RefreshFailed,
    RefreshThrottled,
    TokendError,
    TokenUnavailable,
    Unauthorized,
    UnknownProvider,
)
from tokend_client._address import find_address

APP_KEY = "app-key-0123456789-abcdefghijkl"


def _secrets_absent(text: str, *secrets: str) -> bool:
    return not any(secret and secret in text for secret in secrets)


def test_a_credential_is_what_tokend_serves(stack: Stack) -> None:
    with Client(stack.daemon.url) as client:
        felloh = client.credential("felloh")
        flotiq = client.credential("flotiq")
        fts = client.credential("fts")
    assert stack.fakes.felloh.is_valid(felloh.token) and felloh.token_type == "Bearer"
    assert felloh.headers == {"Authorization": f"Bearer {felloh.token}"} and felloh.query == {}
    assert felloh.expires_at is not None and felloh.expires_at.tzinfo is not None
    assert 3000 < (felloh.expires_at - datetime.now(UTC)).total_seconds() <= 3600
    assert flotiq.expires_at is None and flotiq.query == {"auth_token": flotiq.token}
    assert flotiq.headers == {"X-AUTH-TOKEN": flotiq.token}
    assert set(fts.headers) == {"x-api-key", "Authorization"}
    assert felloh.token not in repr(felloh) and flotiq.token not in repr(flotiq)


def test_a_ready_credential_costs_no_request(tmp_path: Path, fakes: FakeProviders) -> None:
    daemon = start_daemon(tmp_path, fakes)
    try:
        client = Client(daemon.url)
        first = client.credential("felloh")
    finally:
        daemon.kill()
    # tokend is gone: the kept credential is still handed out, and anything that needs tokend says so.
    assert client.credential("felloh") is first
    with pytest.raises(DaemonUnreachable) as caught:
        client.refresh("felloh", rejected=first.token)
    assert caught.value.code == "daemon_unreachable"
    assert f"tokend is not running at {daemon.url}" in str(caught.value) or "cannot reach" in str(caught.value)
    assert _secrets_absent(str(caught.value) + repr(caught.value), first.token)
    client.close()


def test_one_kept_alive_connection_carries_every_request(stack: Stack) -> None:
    with Client(stack.daemon.url, max_age=0) as client:  # max_age=0: every call asks tokend
        ports = set()
        for name in ["felloh", "fts", "flotiq"] * 5 + ["felloh"]:
            client.credential(name)
            (connection,) = client._idle  # one idle connection, the one just used
            assert connection.sock is not None
            ports.add(connection.sock.getsockname()[1])
        client.refresh("flotiq")
    assert len(ports) == 1


def test_a_connection_tokend_closed_is_replaced_without_an_error(tmp_path: Path, fakes: FakeProviders) -> None:
    daemon = start_daemon(tmp_path, fakes)
    try:
        with Client(daemon.url, max_age=0) as client:
            client.credential("felloh")
            daemon.kill()  # the kept connection dies with it; a new daemon comes up on the same port
            daemon = Daemon(daemon.config, log_path=tmp_path / "second.log")
            daemon.start()
            assert fakes.felloh.is_valid(client.credential("felloh").token)
    finally:
        daemon.kill()


def test_a_refresh_naming_the_rejected_token_logs_in_once_for_fifty_callers(stack: Stack) -> None:
    felloh = stack.fakes.felloh
    with Client(stack.daemon.url) as client:
        rejected = client.credential("felloh").token
        felloh.revoke()
        logins = felloh.logins
        barrier = threading.Barrier(50)

        def refresh() -> str:
            barrier.wait(timeout=60)
            return client.refresh("felloh", rejected=rejected).token

        with ThreadPoolExecutor(50) as pool:
            tokens = set(pool.map(lambda _: refresh(), range(50)))
        assert felloh.logins == logins + 1
        (token,) = tokens
        assert token != rejected and felloh.is_valid(token)
        assert client.credential("felloh").token == token  # kept: the next request uses it at once
        # A late caller naming the old token gets the new one from here, without asking tokend.
        assert client.refresh("felloh", rejected=rejected).token == token
        assert felloh.logins == logins + 1


def test_tokend_is_found_through_the_config_file_and_the_environment(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = stack.daemon.config
    port = stack.daemon.url.rsplit(":", 1)[1]
    assert Client(config=config).address.url == stack.daemon.url
    monkeypatch.setenv("TOKEND_CONFIG", str(config))
    assert Client().credential("felloh").provider == "felloh"
    monkeypatch.delenv("TOKEND_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokend.toml").write_text(f'[server]\nport = {port}\nhost = "0.0.0.0"\n')  # reached on loopback
    assert Client().address.url == f"http://127.0.0.1:{port}"
    monkeypatch.setenv("TOKEND_SERVER__PORT", "1")
    assert Client().address.url == "http://127.0.0.1:1"
    monkeypatch.setenv("TOKEND_URL", stack.daemon.url + "/")
    assert Client().address.url == stack.daemon.url
    assert Client("http://[::1]:9000").address.host == "::1"
    assert Client("http://user:secret@127.0.0.1:9/any/path").address.url == "http://127.0.0.1:9"  # shown bare
    for bad in ("https://127.0.0.1:8765", "127.0.0.1:8765", "http://127.0.0.1:99999"):
        with pytest.raises(TokendError, match="is not an http://"):
            Client(bad)


def test_a_unix_socket_in_each_spelling(socket_daemon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = socket_daemon.parent / "tokend.toml"
    encoded = quote(str(socket_daemon), safe="")
    spellings = [f"unix:{socket_daemon}", f"unix://{socket_daemon}", f"http+unix://{encoded}"]
    for url in spellings:
        assert find_address(url).socket == str(socket_daemon)
        with Client(url) as client:
            assert client.credential("felloh").provider == "felloh"
    with Client(config=config) as client:  # the config's `socket`
        assert client.address.socket == str(socket_daemon)
        assert client.refresh("flotiq").token
    monkeypatch.setenv("TOKEND_URL", spellings[2])
    with Client() as client:
        assert client.credential("fts").headers["x-api-key"]


def test_the_client_key_from_the_argument_the_environment_or_a_file(
    tmp_path: Path, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "app_key"
    key_file.write_text(APP_KEY + "\n")
    key_file.chmod(0o600)  # tokend runs no config whose secret files other users can read
    clients = f'[clients.app]\nkey = {{ file = "{key_file}" }}\nproviders = ["fts"]\n'
    daemon = start_daemon(tmp_path, fakes, extra=clients)
    try:
        with pytest.raises(Unauthorized) as no_key:
            Client(daemon.url).credential("fts")
        assert no_key.value.code == "unauthorized"
        with pytest.raises(Unauthorized):
            Client(daemon.url, client_key="not-a-known-key").credential("fts")
        assert Client(daemon.url, client_key=APP_KEY).credential("fts").headers["x-api-key"]
        assert Client(daemon.url, client_key_file=key_file).credential("fts").token
        monkeypatch.setenv("TOKEND_CLIENT_KEY_FILE", str(key_file))
        assert Client(daemon.url).credential("fts").token
        monkeypatch.setenv("TOKEND_CLIENT_KEY", APP_KEY)
        client = Client(daemon.url)
        with pytest.raises(Forbidden) as not_its_own:
            client.credential("felloh")
        with pytest.raises(Forbidden):
            client.refresh("felloh")
        assert not_its_own.value.code == "forbidden" and not_its_own.value.provider == "felloh"
        for exc in (no_key.value, not_its_own.value):
            assert _secrets_absent(str(exc) + repr(exc), APP_KEY)
        assert APP_KEY not in repr(client)
    finally:
        daemon.kill()
    with pytest.raises(TokendError, match="one line of printable ASCII") as bad:
        Client("http://127.0.0.1:1", client_key="line\r\nX-Injected: 1")
    assert "Injected" not in str(bad.value)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokendError, match="is empty"):
        Client("http://127.0.0.1:1", client_key_file=tmp_path / "empty")


def test_each_error_code_is_its_exception(tmp_path: Path, fakes: FakeProviders) -> None:
    fakes.felloh.fail(500)  # every Felloh login fails from the start
    daemon = start_daemon(tmp_path, fakes, ready=False)
    try:
        with Client(daemon.url) as client:
            with pytest.raises(UnknownProvider) as unknown:
                client.credential("nope")
            assert (unknown.value.code, unknown.value.provider) == ("unknown_provider", "nope")
            with pytest.raises(TokenUnavailable) as unavailable:
                client.credential("felloh")
            assert unavailable.value.code == "token_unavailable" and unavailable.value.provider == "felloh"
            assert unavailable.value.next_attempt is not None and unavailable.value.next_attempt > time.time() - 60
            token = client.credential("fts").token
            fakes.fintech_studios.fail(500, times=1)
            with pytest.raises(RefreshFailed) as failed:
                client.refresh("fts", rejected=token)
            assert (failed.value.code, failed.value.upstream_status) == ("refresh_failed", 500)
            for exc in (unknown.value, unavailable.value, failed.value):
                assert _secrets_absent(str(exc) + repr(exc), token, fakes.felloh.private_key)
    finally:
        daemon.kill()
    with pytest.raises(DaemonUnreachable, match="not running") as unreachable:
        Client(f"http://127.0.0.1:{free_port()}").credential("felloh")
    assert unreachable.value.code == "daemon_unreachable"


def test_a_throttled_refresh_carries_its_retry_after() -> None:
    # A stand-in for tokend's answer to a refresh that comes too soon, until the daemon gives it itself.
    async def throttled(request: Request) -> JSONResponse:
        body = {"error": "refresh_throttled", "message": "A refresh came too soon.", "provider": "felloh"}
        return JSONResponse(body, status_code=429, headers={"Retry-After": "3"})

    app = Starlette(routes=[Route("/token/felloh/refresh", throttled, methods=["POST"])])
    with FakeServer(app) as server, Client(server.url) as client, pytest.raises(RefreshThrottled) as caught:
        client.refresh("felloh", rejected="some-token")
    assert (caught.value.code, caught.value.retry_after, caught.value.provider) == ("refresh_throttled", 3.0, "felloh")


def test_an_answer_that_is_not_http_is_reported_as_such() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def garble() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=garble)
        thread.start()
        with Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(DaemonUnreachable, match="not HTTP"):
                client.credential("felloh")
        thread.join(timeout=10)
    assert time.monotonic() - started < 5


def test_the_client_imports_the_standard_library_only() -> None:
    code = ("import sys, tokend_client; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    # Private names are the installers' import hooks (editable installs, setuptools' distutils shim).
    assert [name for name in loaded.stdout.split() if not name.startswith("_")] == ["tokend_client"]


class _Listener:
    """Whatever listens on a TCP port (an impostor, or a host across the network): records the bytes it gets."""

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self.url = f"http://{host}:{self._server.getsockname()[1]}"
        self.received = b""
        self._server.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._server:
            while True:
                try:
                    connection, _ = self._server.accept()
                    break
                except TimeoutError:
                    if self._closed.is_set():
                        return
            with connection:
                connection.settimeout(5)
                self.received = connection.recv(65536)
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)


def _non_loopback_address() -> str:
    """This machine's address on its default route (connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this machine has no route but loopback")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    return address


def test_a_client_key_goes_to_no_remote_host_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = _Listener(_non_loopback_address())
    try:
        with pytest.raises(TokendError, match="is not a loopback address: refusing to send the client key") as no:
            Client(remote.url, client_key=APP_KEY)
        assert APP_KEY not in str(no.value)
        monkeypatch.setenv("TOKEND_URL", remote.url)
        with pytest.raises(TokendError, match="allow_remote=True"):
            Client(client_key=APP_KEY)
        assert Client().address.url == remote.url  # without a key there is nothing to give away
        monkeypatch.setenv("TOKEND_ALLOW_REMOTE", "1")
        Client(client_key=APP_KEY)
        monkeypatch.delenv("TOKEND_ALLOW_REMOTE")
        with pytest.raises(UnknownProvider):  # allowed: the signed request then goes, and the listener gets it
            Client(remote.url, client_key=APP_KEY, allow_remote=True).credential("fts")
        assert b"Authorization: Tokend-HMAC client=" in remote.received
        assert APP_KEY.encode() not in remote.received  # signed: the key itself never leaves
    finally:
        remote.close()


def test_a_client_key_goes_to_no_port_when_the_config_names_a_unix_socket(tmp_path: Path) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[server]\nsocket = "{tmp_path / "tokend.sock"}"\n')
    impostor = _Listener("127.0.0.1")  # took a port while tokend listens on its socket
    try:
        with pytest.raises(TokendError, match=r"listens on the unix socket .*refusing to send the client key"):
            Client(impostor.url, config=config, client_key=APP_KEY)
        assert Client(f"unix:{tmp_path / 'tokend.sock'}", config=config, client_key=APP_KEY).address.socket
        assert impostor.received == b""
    finally:
        impostor.close()
