"""The auth-injecting proxy, end to end: the real daemon as a subprocess, the fake providers' APIs behind it.

Most tests share one daemon (started once for the module) and look at counts as differences, so that each
stays independent of the others' order; those that need their own settings start their own daemon.
"""

from __future__ import annotations

import concurrent.futures
import re
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.daemon import HEADERS, Daemon, accepting, free_port, tokend_command
from tests.test_upstream import TLSFakeServer, fts_table
from tokend.testing import (
    FakeFintechStudios,
    FakeOAuth2,
    FakeProviders,
    FakeServer,
    FakeTokenAPI,
    pattern,
    serve_fakes,
    write_fake_config,
)

# Passed the configured interval, the current manager logs in again on a forced refresh; see `refreshable`.
MIN_REFRESH_INTERVAL = 0.2


@dataclass
class World:
    fakes: FakeProviders
    oauth: FakeOAuth2
    token_api: FakeTokenAPI
    daemon: Daemon
    listen_port: int
    listen_socket: Path
    config: Path

    def fake(self, provider: str) -> Any:
        return {"felloh": self.fakes.felloh, "felloh_own": self.fakes.felloh, "fts": self.fakes.fintech_studios,
                "flotiq": self.fakes.flotiq, "flotiq_query": self.fakes.flotiq, "flotiq_own": self.fakes.flotiq,
                "oauth": self.oauth, "api": self.token_api}[provider]


def _extra(oauth_url: str, token_api_url: str, fakes: FakeProviders, directory: Path, port: int, sock: Path) -> str:
    key = directory / "flotiq_api_key"
    return f"""
[providers.oauth]
kind = "oauth2_client_credentials"
token_url = "{oauth_url}/oauth/token"
client_id = "demo-client"
client_secret = "demo-client-secret"
api_url = "{oauth_url}"
proxy = true
min_refresh_interval = {MIN_REFRESH_INTERVAL}

[providers.api]
kind = "http"
url = "{token_api_url}/session"
secrets = {{ pw = "demo-api-password" }}
headers = {{ X-Client = "demo" }}
json = {{ user = "demo", password = "{{pw}}" }}
token_pointer = "/result/session/key"
expiry_pointer = "/result/session/expiry"
serve_headers = {{ Authorization = "Session {{token}}" }}
api_url = "{token_api_url}"
proxy = true
proxy_retry_body_limit = 1024
min_refresh_interval = {MIN_REFRESH_INTERVAL}

[providers.flotiq_query]
kind = "static"
key = {{ file = "{key}" }}
header = ""
query_param = "auth_token"
api_url = "{fakes.flotiq_url}"
proxy = true

[providers.felloh_own]
kind = "felloh"
base_url = "{fakes.felloh_url}"
public_key = {{ file = "{directory / 'felloh_public_key'}" }}
private_key = {{ file = "{directory / 'felloh_private_key'}" }}
proxy = true
proxy_listen = "127.0.0.1:{port}"
min_refresh_interval = {MIN_REFRESH_INTERVAL}

[providers.flotiq_own]
kind = "flotiq"
base_url = "{fakes.flotiq_url}"
api_key = {{ file = "{key}" }}
proxy = true
proxy_listen = "{sock}"

[providers.closed]
kind = "flotiq"
base_url = "{fakes.flotiq_url}"
api_key = {{ file = "{key}" }}
api_url = "http://127.0.0.1:{free_port()}"
proxy = true
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("proxy")
    oauth, token_api = FakeOAuth2(), FakeTokenAPI()
    with serve_fakes() as fakes, FakeServer(oauth.app) as oauth_server, FakeServer(token_api.app) as api_server:
        port, sock = free_port(), directory / "flotiq.sock"
        extra = _extra(oauth_server.url, api_server.url, fakes, directory, port, sock)
        # write_fake_config writes the secret files the extra tables name.
        config = write_fake_config(directory, fakes, free_port(), extra=extra, proxy=True,
                                   min_refresh_interval=MIN_REFRESH_INTERVAL)
        daemon = Daemon(config, log_path=directory / "daemon.log")
        try:
            daemon.start()
            yield World(fakes, oauth, token_api, daemon, port, sock, config)
        finally:
            daemon.kill()


def refreshable() -> None:
    """Let min_refresh_interval pass since the last login. The current manager answers a forced refresh
    inside it with the token it holds (a rejected one too), so a 401 would get no new token; the rule of
    `refresh(rejected=...)` lifts that, and this wait is then merely harmless."""
    time.sleep(MIN_REFRESH_INTERVAL * 1.5)


def proxy(world: World, method: str, provider: str, path: str, **kwargs: Any) -> httpx.Response:
    return world.daemon.client.request(method, f"/proxy/{provider}{path}", **kwargs)


def echoed_headers(response: httpx.Response) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        found.setdefault(name, []).append(value)
    return found


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given (httpx would tidy an escaping path before sending it); the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return length is not None and len(body) >= int(length.group(1))


def port_of(daemon: Daemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


# --- each kind gets its credential, as its docs say --------------------------------------------------------


@pytest.mark.parametrize("provider", ["felloh", "fts", "flotiq", "flotiq_query", "oauth", "api"])
def test_each_kind_reaches_its_api_with_its_credential(world: World, provider: str) -> None:
    fake = world.fake(provider)
    refused = fake.api.refused
    answer = proxy(world, "GET", provider, "/echo/a/b?x=1&y=two%20words&x=3")
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["method"], seen["path"]) == ("GET", "/echo/a/b")
    assert seen["query"].startswith("x=1&y=two%20words&x=3")  # kept as sent, order and repeats included
    assert fake.api.refused == refused
    headers = echoed_headers(answer)
    match provider:
        case "felloh" | "oauth":
            token = headers["authorization"][0].removeprefix("Bearer ")
            assert fake.is_valid(token)
        case "fts":
            assert headers["x-api-key"] == [world.fakes.fintech_studios.api_key]
            assert fake.is_valid(headers["authorization"][0].removeprefix("Bearer "))
        case "flotiq":  # both ways at once: the key as the header and as ?auth_token=
            key = sorted(world.fakes.flotiq.api_keys)[0]
            assert headers["x-auth-token"] == [key]
            assert seen["query"] == f"x=1&y=two%20words&x=3&auth_token={key}"
        case "flotiq_query":  # the query alone is enough
            assert "x-auth-token" not in headers and "authorization" not in headers
            assert seen["query"].endswith(f"&auth_token={sorted(world.fakes.flotiq.api_keys)[0]}")
        case "api":
            assert headers["authorization"][0].startswith("Session ")


def test_the_documented_example_and_a_client_sent_key_that_is_replaced(world: World) -> None:
    answer = proxy(world, "GET", "felloh", "/agent/organisations")
    assert answer.status_code == 200 and answer.json()["data"][0]["name"] == "Demo Travel Ltd"
    # A key of the client's own, in the query or the headers, is replaced: the credential's is the only one.
    answer = proxy(world, "GET", "flotiq", "/echo/x?auth_token=mine&keep=1", headers={"X-Auth-Token": "mine"})
    key = sorted(world.fakes.flotiq.api_keys)[0]
    assert answer.json()["query"] == f"keep=1&auth_token={key}"
    assert echoed_headers(answer)["x-auth-token"] == [key]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_with_bodies(world: World, method: str) -> None:
    body = b'{"amount": 100}' * 100
    answer = proxy(world, method, "felloh", "/echo/payments?page=2", content=body,
                   headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    seen = answer.json()
    assert (seen["method"], seen["size"], seen["crc32"]) == (method, len(body), zlib.crc32(body))
    assert echoed_headers(answer)["content-type"] == ["application/json"]
    # A body larger than the retry limit streams through the same way (the api provider keeps 1 KiB).
    large = bytes(range(256)) * 64
    seen = proxy(world, method, "api", "/echo/x", content=large).json()
    assert (seen["size"], seen["crc32"]) == (len(large), zlib.crc32(large))
    # And one of unknown length, sent chunked.
    seen = proxy(world, method, "api", "/echo/x", content=iter([large, large])).json()
    assert (seen["size"], seen["crc32"]) == (2 * len(large), zlib.crc32(large + large))


def test_headers_are_stripped_both_ways(world: World) -> None:
    answer = proxy(world, "GET", "felloh", "/echo/h", headers={
        "Authorization": "Bearer the-clients-own", "Cookie": "session=local", "Connection": "X-Hop, keep-alive",
        "X-Hop": "1", "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic eA==", "TE": "trailers",
        "X-Kept": "yes", "User-Agent": "proxy-test",
    })
    assert answer.status_code == 200
    headers = echoed_headers(answer)
    for gone in ("cookie", "x-hop", "keep-alive", "proxy-authorization", "te", "x-tokend-request", "via",
                 "x-forwarded-for", "forwarded", "x-forwarded-host"):
        assert gone not in headers, gone
    assert len(headers["authorization"]) == 1 and headers["authorization"] != ["Bearer the-clients-own"]
    assert headers["host"] == [world.fakes.felloh_url.removeprefix("http://")]
    assert (headers["x-kept"], headers["user-agent"]) == (["yes"], ["proxy-test"])
    # Back: the upstream's own headers, without its Set-Cookie.
    assert answer.headers["x-upstream"] == "fake" and "set-cookie" not in answer.headers


def test_redirects_go_back_to_the_client(world: World) -> None:
    answer = proxy(world, "GET", "felloh", "/redirect")
    assert (answer.status_code, answer.headers["location"]) == (302, "/echo/moved")


# --- 401: one refresh, one retry --------------------------------------------------------------------------


def test_a_revoked_token_costs_one_login_and_one_retry(world: World) -> None:
    fake = world.fakes.felloh
    refreshable()
    logins, requests = fake.logins, fake.api.requests["echo"]
    fake.revoke()
    answer = proxy(world, "POST", "felloh", "/echo/again", content=b"once more")
    assert answer.status_code == 200 and answer.json()["size"] == 9
    assert fake.logins == logins + 1
    assert fake.api.requests["echo"] == requests + 2  # refused once, then answered
    assert 'tokend_proxy_retries_total{provider="felloh"}' in world.daemon.get("/metrics").text


@pytest.mark.parametrize("provider", ["felloh", "fts", "oauth", "api"])
def test_fifty_concurrent_requests_share_one_login(world: World, provider: str) -> None:
    fake = world.fake(provider)
    refreshable()
    logins, requests, refused = fake.logins, fake.api.requests["echo"], fake.api.refused
    fake.revoke()
    limits = httpx.Limits(max_connections=50)
    with (httpx.Client(base_url=world.daemon.url, headers=HEADERS, timeout=30, limits=limits) as client,
          concurrent.futures.ThreadPoolExecutor(50) as pool):
        answers = list(pool.map(lambda i: client.post(f"/proxy/{provider}/echo/{i}", content=b"x" * i), range(50)))
    assert [answer.status_code for answer in answers] == [200] * 50
    assert [answer.json()["size"] for answer in answers] == list(range(50))
    assert fake.logins == logins + 1
    # Those sent before the new token came were refused once and retried once; the rest went through.
    refused = fake.api.refused - refused
    assert refused >= 1 and fake.api.requests["echo"] == requests + 50 + refused


def test_what_is_not_retried(world: World) -> None:
    fake = world.fakes.felloh
    refreshable()
    logins, requests = fake.logins, fake.api.requests["echo"]
    # A 401 that a new token does not cure: one refresh, one retry, and the second 401 goes back as it is.
    answer = proxy(world, "GET", "felloh", "/echo/x?status=401")
    assert answer.status_code == 401 and answer.json()["method"] == "GET"
    assert (fake.logins, fake.api.requests["echo"]) == (logins + 1, requests + 2)
    # Anything but a 401: never retried, and no login.
    for status in (403, 404, 429, 500, 503):
        assert proxy(world, "GET", "felloh", f"/echo/x?status={status}").status_code == status
    assert (fake.logins, fake.api.requests["echo"]) == (logins + 1, requests + 7)
    # A body over proxy_retry_body_limit is not kept, so not sent again: the 401 goes back, and the refresh
    # still happens, so that the client's own retry finds a good token.
    api = world.token_api
    refreshable()
    logins, requests = api.logins, api.api.requests["echo"]
    api.revoke()
    answer = proxy(world, "POST", "api", "/echo/big", content=b"z" * 4096)
    assert answer.status_code == 401 and api.api.requests["echo"] == requests + 1
    world.daemon.wait_until(lambda: api.is_valid(world.daemon.get("/token/api?format=raw").text),
                            what="the refresh after the 401")
    assert api.logins == logins + 1
    assert proxy(world, "POST", "api", "/echo/big", content=b"z" * 4096).status_code == 200


# --- what is refused ----------------------------------------------------------------------------------------


ESCAPES = [
    b"/proxy/felloh/../token", b"/proxy/felloh/a/../../x", b"/proxy/felloh/%2e%2e/x", b"/proxy/felloh/.%2E/x",
    b"/proxy/felloh/./x", b"/proxy/felloh/a%2fb", b"/proxy/felloh/a%2F..%2Fb", b"/proxy/felloh/a%5cb",
    b"/proxy/felloh/a\\b", b"/proxy/felloh/user@evil.example/x", b"/proxy/felloh/a%40evil.example",
    b"/proxy/felloh//evil.example/x", b"/proxy/felloh/http://evil.example/x", b"/proxy/felloh/a%0d%0aX-Injected:%201",
    b"/proxy/felloh/a%0aX", b"/proxy/felloh/a%00",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_that_could_escape_the_origin_are_refused(world: World, path: bytes) -> None:
    requests = sum(world.fakes.felloh.api.requests.values())
    status, body = raw_request(port_of(world.daemon),
                               b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: 1\r\n\r\n")
    assert status == 400, body
    assert sum(world.fakes.felloh.api.requests.values()) == requests


def test_raw_control_characters_never_reach_the_upstream(world: World) -> None:
    status, _ = raw_request(port_of(world.daemon),
                            b"GET /proxy/felloh/a\rb HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: 1\r\n\r\n")
    assert status == 400


def test_unknown_and_unproxied_providers(world: World, tmp_path: Path) -> None:
    answer = proxy(world, "GET", "nobody", "/x")
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_provider")
    assert proxy(world, "GET", "", "").status_code == 404


def test_an_unreachable_upstream_is_a_502_with_the_reason(world: World) -> None:
    answer = proxy(world, "GET", "closed", "/x")
    assert answer.status_code == 502
    assert answer.json()["error"] == "upstream_unreachable"
    assert "Connect call failed" in answer.json()["message"] or "refused" in answer.json()["message"].lower()


# --- streaming ------------------------------------------------------------------------------------------------


def test_server_sent_events_arrive_one_by_one(world: World) -> None:
    api = world.fakes.felloh.api
    with world.daemon.client.stream("GET", "/proxy/felloh/events?n=3") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines()
        for number in range(3):
            # Event N is read before event N+1 is allowed to exist: nothing waits for more to fill a buffer.
            assert next(lines) == f"id: {number}"
            assert next(lines) == f"data: event {number}"
            assert next(lines) == ""
            api.release()


def test_a_client_that_hangs_up_cancels_the_upstream_request(world: World) -> None:
    api = world.fakes.felloh.api
    holding, cancelled = api.holding, api.cancelled
    with socket.create_connection(("127.0.0.1", port_of(world.daemon)), timeout=10) as sock:
        sock.sendall(b"GET /proxy/felloh/hold HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tokend-Request: 1\r\n\r\n")
        world.daemon.wait_until(lambda: api.holding == holding + 1, what="the request to reach the upstream")
    world.daemon.wait_until(lambda: api.cancelled == cancelled + 1, timeout=10, what="the upstream request to end")


def rss_peak(daemon: Daemon) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


LARGE = 1 << 30  # 1 GiB


def test_a_large_upload_and_download_stream_with_bounded_memory(world: World) -> None:
    client = world.daemon.client
    proxy(world, "POST", "felloh", "/upload", content=iter([b"warm-up"] * 3))  # the code paths, once
    before = rss_peak(world.daemon)
    started = time.monotonic()
    crc = 0
    for piece in pattern(LARGE):
        crc = zlib.crc32(piece, crc)
    answer = client.post("/proxy/felloh/upload", content=pattern(LARGE), timeout=300)
    assert answer.status_code == 200 and answer.json() == {"size": LARGE, "crc32": crc}
    size, received = 0, 0
    with client.stream("GET", f"/proxy/felloh/bytes/{LARGE}", timeout=300) as download:
        assert download.status_code == 200
        for piece in download.iter_raw():
            size, received = size + len(piece), zlib.crc32(piece, received)
    assert (size, received) == (LARGE, crc)
    grown = rss_peak(world.daemon) - before
    print(f"2 x {LARGE >> 20} MiB through the proxy in {time.monotonic() - started:.1f}s; "
          f"peak RSS grew {grown / (1 << 20):.1f} MiB")
    assert grown < 16 << 20


# --- the request checks, on both listeners --------------------------------------------------------------------


REFUSED_HEADERS: list[dict[str, str]] = [
    {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Mode": "no-cors"},
    {"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"Host": "evil.example"},
]


@pytest.mark.parametrize("where", ["api", "own_port", "own_socket"])
def test_the_request_checks_of_token_hold_on_every_listener(world: World, where: str) -> None:
    if where == "own_socket":
        assert accepting(world.listen_socket)
        transport = httpx.HTTPTransport(uds=str(world.listen_socket))
        client = httpx.Client(transport=transport, base_url="http://localhost", timeout=10)
        path = "/echo/s"
    elif where == "own_port":
        client = httpx.Client(base_url=f"http://127.0.0.1:{world.listen_port}", timeout=10)
        path = "/echo/p"  # forwarded as it is: no /proxy/NAME in front
    else:
        client = httpx.Client(base_url=world.daemon.url, timeout=10)
        path = "/proxy/felloh/echo/a"
    requests = world.fakes.felloh.api.requests["echo"] + world.fakes.flotiq.api.requests["echo"]
    with client:
        assert client.get(path).status_code == 403  # no X-Tokend-Request
        for headers in REFUSED_HEADERS:
            if headers.get("Host") and where == "own_socket":
                continue  # a unix socket has no Host to check: its file mode guards it
            answer = client.get(path, headers={**HEADERS, **headers})
            assert (answer.status_code, answer.json()["error"]) == (403, "forbidden"), headers
        assert world.fakes.felloh.api.requests["echo"] + world.fakes.flotiq.api.requests["echo"] == requests
        answer = client.get(path, headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["path"] == path.removeprefix("/proxy/felloh")
        if where == "own_port":  # every path belongs to the provider there, /token/ and /status too
            assert client.get("/token/felloh", headers=HEADERS).status_code == 404  # the fake's, not tokend's
    assert where != "own_socket" or oct(world.listen_socket.stat().st_mode & 0o777) == "0o600"


def test_client_keys_guard_the_proxy_and_never_go_upstream(tmp_path: Path) -> None:
    key, other = "k" * 24, "o" * 24
    extra = (f'[clients.app]\nkey = "{key}"\nproviders = ["felloh"]\n'
             f'[clients.other]\nkey = "{other}"\nproviders = ["fts"]\n')
    with serve_fakes() as fakes:
        daemon = Daemon(write_fake_config(tmp_path, fakes, free_port(), extra=extra, proxy=True),
                        log_path=tmp_path / "daemon.log")
        try:
            daemon.start(ready=False)
            daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, what="ready")
            assert daemon.get("/proxy/felloh/echo/x").status_code == 401
            bad = daemon.get("/proxy/felloh/echo/x", headers={"Authorization": f"Bearer {other}"})
            assert bad.status_code == 403
            good = daemon.get("/proxy/felloh/echo/x", headers={"Authorization": f"Bearer {key}"})
            assert good.status_code == 200
            sent = echoed_headers(good)["authorization"]
            assert len(sent) == 1 and key not in sent[0] and fakes.felloh.is_valid(sent[0].removeprefix("Bearer "))
        finally:
            daemon.kill()


def test_no_token_no_request(tmp_path: Path) -> None:
    with serve_fakes() as fakes:
        fakes.felloh.fail(401)  # every login refused: there is never a token
        daemon = Daemon(write_fake_config(tmp_path, fakes, free_port(), proxy=True),
                        log_path=tmp_path / "daemon.log")
        try:
            daemon.start(ready=False)
            answer = daemon.get("/proxy/felloh/echo/x")
            assert (answer.status_code, answer.json()["error"]) == (503, "token_unavailable")
            assert sum(fakes.felloh.api.requests.values()) == 0
            # A provider without proxy = true is not proxied at all.
        finally:
            daemon.kill()


def test_proxy_is_off_unless_asked_for(tmp_path: Path) -> None:
    with serve_fakes() as fakes:
        daemon = Daemon(write_fake_config(tmp_path, fakes, free_port()), log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            answer = daemon.get("/proxy/felloh/echo/x")
            assert (answer.status_code, answer.json()["error"]) == (404, "proxy_off")
            assert sum(fakes.felloh.api.requests.values()) == 0
        finally:
            daemon.kill()


# --- around it: metrics, logs, tokend check ------------------------------------------------------------------


def test_metrics_count_proxied_requests(world: World) -> None:
    proxy(world, "GET", "fts", "/echo/m")
    text = world.daemon.get("/metrics").text
    assert re.search(r'tokend_proxy_requests_total\{provider="fts",status="2xx"\} [1-9]', text)
    assert 'tokend_proxy_upstream_seconds_bucket{le="+Inf",provider="fts"}' in text


def test_no_token_or_key_in_the_log(world: World) -> None:
    proxy(world, "GET", "closed", "/x?auth_token=secret-in-query")
    log = world.daemon.log()
    secrets = [*world.fakes.felloh.issued, *world.fakes.fintech_studios.issued, *world.oauth.issued,
               *world.token_api.issued, *world.fakes.flotiq.api_keys, "secret-in-query"]
    assert secrets and not [secret for secret in secrets if secret in log]


def test_check_shows_each_proxy_target(world: World) -> None:
    world.config.chmod(0o600)  # it holds plain-string test secrets, which check calls an error otherwise
    shown = subprocess.run(tokend_command("--config", str(world.config), "check"), capture_output=True,
                           text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"proxy: /proxy/felloh/ -> {world.fakes.felloh_url}\n" in shown.stdout
    own = f"proxy: /proxy/felloh_own/ -> {world.fakes.felloh_url}, and on 127.0.0.1:{world.listen_port}\n"
    assert own in shown.stdout


def test_tls_upstreams_are_verified_and_connections_kept_alive(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    good, wrong = FakeFintechStudios(), FakeFintechStudios()
    (tmp_path / "good.pem").write_bytes(ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.bytes())
    (tmp_path / "wrong.pem").write_bytes(ca.issue_cert("elsewhere.example").private_key_and_cert_chain_pem.bytes())
    with TLSFakeServer(good.app, tmp_path / "good.pem") as good_server, \
            TLSFakeServer(wrong.app, tmp_path / "wrong.pem") as wrong_server:
        config = tmp_path / "tokend.toml"
        config.write_text(f'[server]\nport = {free_port()}\n[upstream]\nca_bundle = "{bundle}"\n'
                          + fts_table("good", good, good_server.url) + "proxy = true\n"
                          # Its login goes to the good server; its API to the server with the wrong name.
                          + fts_table("wrong", good, good_server.url)
                          + f'proxy = true\napi_url = "{wrong_server.url}"\n')
        daemon = Daemon(config, log_path=tmp_path / "daemon.log")
        try:
            daemon.start()
            for number in range(20):
                assert daemon.get(f"/proxy/good/echo/{number}").status_code == 200
            metrics = daemon.get("/metrics").text
            assert "tokend_proxy_upstream_connections_total 1.0" in metrics  # one handshake for all 20
            answer = daemon.get("/proxy/wrong/echo/x")
            assert answer.status_code == 502 and "certificate" in answer.json()["message"]
            assert sum(wrong.api.requests.values()) == 0
        finally:
            daemon.kill()
