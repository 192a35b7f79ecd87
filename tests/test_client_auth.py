"""How a client proves who it is without handing its key to whoever listens: signed requests (the client
commands and both libraries), `allow_bearer = false`, and clients known by their Unix user on the socket.

An impostor is a plain server on the daemon's port that records what it was sent, as a local user who bound
127.0.0.1:8765 while tokend was down would."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import HEADERS, Daemon, accepting, free_port, tokend_command, write_config
from tokend.api import request_signing as signed
from tokend.api.guard import NO_CLIENT_KEY, RequestGuard
from tokend.config.tables import ClientConfig
from tokend.testing import FakeProviders

KEY = "app-key-0123456789-abcdefghijkl"


class Impostor:
    """Listens on a port and answers every request with a 503, keeping every byte it was sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                        data += chunk
                except TimeoutError:
                    pass
                self.received.append(data)
                connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                                   b"connection: close\r\n\r\n")

    def authorization(self, index: int = 0) -> str:
        for line in self.received[index].decode("latin-1").split("\r\n"):
            if line.lower().startswith("authorization:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"no Authorization in {self.received[index]!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@pytest.fixture
def impostor() -> Iterator[Impostor]:
    server = Impostor()
    yield server
    server.close()


def _client_table(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "app_key").write_text(KEY + "\n")
    (tmp_path / "app_key").chmod(0o600)
    return f'\n[clients.app]\nkey = {{ file = "{tmp_path / "app_key"}" }}\nproviders = ["fts"]\n{extra}'


def test_the_client_commands_and_the_python_library_never_hand_the_key_to_an_impostor(
    daemon_factory, tmp_path: Path, impostor: Impostor  # type: ignore[no-untyped-def]
) -> None:
    from tokend_client import Client as LibraryClient
    from tokend_client import TokendError as LibraryError

    daemon = daemon_factory(extra=_client_table(tmp_path))
    got = subprocess.run(tokend_command("get", "fts", "--url", f"http://127.0.0.1:{impostor.port}"),
                         capture_output=True, text=True, timeout=60, env={**os.environ, "TOKEND_CLIENT_KEY": KEY})
    assert got.returncode != 0
    with LibraryClient(f"http://127.0.0.1:{impostor.port}", client_key=KEY) as library, \
            pytest.raises(LibraryError):
        library.credential("fts")
    assert len(impostor.received) == 2
    for request in impostor.received:
        assert KEY.encode() not in request, request
    # What the impostor holds is a signature for one request: it names the key only by its id.
    cli, lib = impostor.authorization(0), impostor.authorization(1)
    assert cli.startswith(f"Tokend-HMAC client={signed.key_id(KEY)}, ") and lib.startswith("Tokend-HMAC ")

    # Replayed to the real daemon for another request: refused (the path is signed).
    other = daemon.get("/token/felloh", headers={"Authorization": cli})
    assert other.status_code == 401
    # For the same request, the first use goes through (the window is the residual risk), never a second.
    first = daemon.get("/token/fts", headers={"Authorization": lib})
    again = daemon.get("/token/fts", headers={"Authorization": lib})
    assert first.status_code == 200 and again.status_code == 401, (first.text, again.text)
    assert "already used" in again.json()["message"]
    # A signature older than the window is refused even unused.
    stale = signed.authorization(KEY, "GET", "/token/fts", now=time.time() - signed.WINDOW - 5)
    assert daemon.get("/token/fts", headers={"Authorization": stale}).status_code == 401
    # The real daemon takes fresh signatures from both, and the key itself from curl.
    ok = subprocess.run(tokend_command("get", "fts", "--url", daemon.url), capture_output=True, text=True,
                        timeout=60, env={**os.environ, "TOKEND_CLIENT_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    with LibraryClient(daemon.url, client_key=KEY) as library:
        assert library.credential("fts").token == ok.stdout.strip()
    assert daemon.get("/token/fts", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("tampered", ["sig", "client", "ts", "method", "query"])
def test_a_signature_that_does_not_match_the_request_is_refused(daemon_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                tampered: str) -> None:
    daemon = daemon_factory(extra=_client_table(tmp_path))
    header = signed.authorization(KEY, "GET", "/token/fts")
    fields = dict(part.strip().split("=", 1) for part in header.removeprefix("Tokend-HMAC ").split(","))
    method, path = "GET", "/token/fts"
    if tampered == "sig":
        fields["sig"] = fields["sig"][::-1]
    elif tampered == "client":
        fields["client"] = signed.key_id("another-key-of-sufficient-length")
    elif tampered == "ts":
        fields["ts"] = str(int(fields["ts"]) + 1)
    elif tampered == "method":
        method = "POST"
        path = "/token/fts/refresh"
    elif tampered == "query":
        path = "/token/fts?format=raw"
    forged = "Tokend-HMAC " + ", ".join(f"{name}={value}" for name, value in fields.items())
    answer = daemon.client.request(method, path, headers={"Authorization": forged})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", answer.text
    assert KEY not in answer.text


def test_allow_bearer_false_refuses_the_bare_key_and_takes_signatures(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(extra=_client_table(tmp_path, "allow_bearer = false\n"))
    bare = daemon.get("/token/fts", headers={"Authorization": f"Bearer {KEY}"})
    assert bare.status_code == 401 and "allow_bearer = false" in bare.json()["message"]
    fast = daemon.get("/token/fts", headers={"Authorization": signed.authorization(KEY, "GET", "/token/fts")})
    assert fast.status_code == 200
    raw = daemon.get("/token/fts?format=raw",
                     headers={"Authorization": signed.authorization(KEY, "GET", "/token/fts?format=raw")})
    assert raw.status_code == 200 and raw.text == fast.json()["token"]
    status = daemon.get("/status", headers={"Authorization": signed.authorization(KEY, "GET", "/status")})
    assert set(status.json()["providers"]) == {"fts"}
    got = subprocess.run(tokend_command("get", "fts", "--url", daemon.url), capture_output=True, text=True,
                         timeout=60, env={**os.environ, "TOKEND_CLIENT_KEY": KEY})
    assert got.returncode == 0 and got.stdout.strip() == fast.json()["token"], got.stderr


# --- clients known by their Unix user -------------------------------------------------------------------------

_AS_USER = r"""
import http.client, os, pwd, socket, sys
path, target, key, user = sys.argv[1:5]
if user != "-":
    entry = pwd.getpwnam(user)
    os.setgid(entry.pw_gid)
    os.setgroups([])
    os.setuid(entry.pw_uid)
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
connection = http.client.HTTPConnection("localhost")
connection.sock = sock
headers = {"X-Tokend-Request": "t"}
if key != "-":
    headers["Authorization"] = "Bearer " + key
connection.request("GET", target, headers=headers)
answer = connection.getresponse()
print(answer.status, answer.read().decode())
"""


def _ask(path: Path, target: str, *, key: str = "-", user: str = "-") -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", _AS_USER, str(path), target, key, user], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition(" ")
    return int(status), body


@pytest.fixture
def socket_daemon(fakes: FakeProviders) -> Iterator[tuple[Path, Daemon]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: a second Unix user is reached by a child that setuid()s to nobody")
    directory = Path(tempfile.mkdtemp(prefix="tokend-peer-"))
    directory.chmod(0o755)  # nobody must reach the socket; the socket's own mode is what admits it
    (directory / "both_key").write_text(KEY + "\n")
    (directory / "both_key").chmod(0o600)
    me = pwd.getpwuid(os.geteuid()).pw_name
    config = write_config(directory, fakes, extra=f"""
[clients.mine]
unix_user = "{me}"
providers = ["fts"]

[clients.nobody_with_key]
key = {{ file = "{directory / 'both_key'}" }}
unix_user = "nobody"
providers = ["felloh"]
""")
    path = directory / "tokend.sock"
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nsocket = "{path}"\nsocket_mode = "0666"\n'))
    daemon = Daemon(config, log_path=directory / "daemon.log")
    with (directory / "daemon.log").open("wb") as log:
        daemon.process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not accepting(path):
        assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.log()
        time.sleep(0.05)
    while _ask(path, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    yield path, daemon
    daemon.kill()


def test_a_client_known_by_its_unix_user_needs_no_key_on_the_socket(socket_daemon: tuple[Path, Daemon]) -> None:
    path, _ = socket_daemon
    assert _ask(path, "/token/fts")[0] == 200  # this user, no key
    assert _ask(path, "/token/felloh")[0] == 403  # not among its providers
    status, body = _ask(path, "/status")
    assert status == 200 and '"fts"' in body and '"felloh"' not in body
    # nobody has no keyless client: without its key it is refused, and it cannot pass for this user.
    assert _ask(path, "/token/fts", user="nobody")[0] == 401


def test_a_key_and_a_unix_user_are_both_required_where_both_are_named(socket_daemon: tuple[Path, Daemon]) -> None:
    path, _ = socket_daemon
    assert _ask(path, "/token/felloh", key=KEY, user="nobody")[0] == 200  # the key, from its user
    status, body = _ask(path, "/token/felloh", key=KEY)  # the key, from another user
    assert status == 401 and "Unix user" in body and KEY not in body
    assert _ask(path, "/token/felloh", user="nobody")[0] == 401  # its user, without the key


def test_over_tcp_a_client_known_by_its_unix_user_cannot_be_matched() -> None:
    from tokend.config.tables import ServerConfig

    me = pwd.getpwuid(os.geteuid()).pw_name
    guard = RequestGuard(ServerConfig())
    clients = {"mine": ClientConfig(unix_user=me, providers=("fts",))}
    def scope(**extra: object) -> dict[str, object]:
        return {"type": "http", "method": "GET", "path": "/token/fts", "raw_path": b"/token/fts",
                "query_string": b"", "headers": [(b"x-tokend-request", b"t")], "client": ("127.0.0.1", 5000), **extra}

    assert guard.identify(scope(), clients) == NO_CLIENT_KEY
    peer = {"pid": 1, "uid": os.geteuid(), "gid": os.getegid()}
    found = guard.identify(scope(extensions={"tokend.peer": peer}), clients)
    assert not isinstance(found, type(NO_CLIENT_KEY)) and found.name == "mine"


def test_a_client_with_neither_key_nor_user_or_an_unknown_user_is_a_config_error(tmp_path: Path,
                                                                                 fakes: FakeProviders) -> None:
    for table, expected in (('providers = ["fts"]\n', "set key, unix_user or unix_group"),
                            ('unix_user = "no-such-user-here"\nproviders = ["fts"]\n', "not a user on this machine"),
                            ('unix_group = "no-such-group-here"\nproviders = ["fts"]\n', "not a group")):
        config = write_config(tmp_path, fakes, extra=f"\n[clients.app]\n{table}")
        checked = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                                 timeout=60)
        assert checked.returncode == 3 and expected in checked.stderr and "Traceback" not in checked.stderr, \
            checked.stderr


def test_an_unknown_authorization_scheme_is_a_401(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(extra=_client_table(tmp_path))
    answer = httpx.get(f"{daemon.url}/token/fts", headers={**HEADERS, "Authorization": f"Basic {KEY}"})
    assert answer.status_code == 401 and KEY not in answer.text


