"""Upstream TLS and proxies, against real servers on 127.0.0.1: a fake provider over TLS with a throwaway CA
(trustme), and a recording proxy that shows which requests were sent through it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import trustme
import uvicorn
from starlette.types import ASGIApp

from tests.daemon import write_config
from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.daemon import Daemon
from tokend.errors import ConfigError, TokenUnavailable
from tokend.providers.upstream import Proxies, build_client, trust_store
from tokend.testing import FakeFintechStudios, FakeProviders, FakeServer

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def _no_proxy_settings_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Either case counts (curl's rule), so a developer's own http_proxy must not leak into these tests.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


# --- helpers --------------------------------------------------------------------------------------------


class TLSFakeServer(FakeServer):
    """A FakeServer that answers over TLS with the key and certificate chain in `pem`."""

    def __init__(self, app: ASGIApp, pem: Path) -> None:
        super().__init__(app)
        self._pem = pem

    def start(self) -> TLSFakeServer:
        super().start()
        self.url = self.url.replace("http://", "https://", 1)
        return self

    def _config(self) -> uvicorn.Config:
        config = super()._config()
        config.ssl_certfile = config.ssl_keyfile = str(self._pem)
        return config


@contextlib.contextmanager
def tls_fake(tmp_path: Path, ca: trustme.CA, *names: str) -> Iterator[tuple[FakeFintechStudios, str]]:
    """A FinTech Studios fake over TLS, its certificate issued by `ca` for `names`; yields it and its URL."""
    fake = FakeFintechStudios()
    pem = tmp_path / "server.pem"
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(pem))
    with TLSFakeServer(fake.app, pem) as server:
        yield fake, server.url


def fts_table(name: str, fake: FakeFintechStudios, url: str) -> str:
    return (f'[providers.{name}]\nkind = "fintech_studios"\nbase_url = "{url}"\napi_key = "{fake.api_key}"\n'
            f'email = "{fake.email}"\npassword = "{fake.password}"\ntimeout = 5\n')


def upstream_table(ca_bundle: Path | None) -> str:
    return "" if ca_bundle is None else f'[upstream]\nca_bundle = "{ca_bundle}"\n'


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "tokend.toml"
    path.write_text(text)
    return Settings.load(path)


async def first_logins(settings: Settings) -> dict[str, Credential | str]:
    """Start a manager; each provider's first credential, or the message of the error that stands instead."""
    results: dict[str, Credential | str] = {}
    async with Daemon(settings) as daemon:
        manager = daemon.manager
        for name in settings.providers:
            try:
                results[name] = await manager.get(name)
            except TokenUnavailable as exc:
                results[name] = exc.message
    return results


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that records each request line it gets, then answers 502 and hangs up."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line:
            self.seen.append(line.decode("latin-1").rstrip("\r\n"))
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            writer.close()
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def proxy_everywhere(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RecordingProxy]:
    """A recording proxy, named in every proxy variable, with a NO_PROXY that lists no loopback host."""
    async with RecordingProxy() as proxy:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.setenv("NO_PROXY", "intranet.example.com")
        yield proxy


# --- TLS --------------------------------------------------------------------------------------------------


def test_a_certificate_from_an_unknown_ca_fails_the_login_with_a_clear_report(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    with tls_fake(tmp_path, ca, "127.0.0.1", "localhost") as (fake, url):
        settings = load(tmp_path, fts_table("fts", fake, url))
        result = asyncio.run(first_logins(settings))["fts"]
        assert fake.login_attempts == 0  # refused at the handshake: the credentials never left
    assert isinstance(result, str)
    assert f"could not reach {url}/auth/token" in result
    assert "CERTIFICATE_VERIFY_FAILED" in result
    assert "Traceback" not in result and fake.password not in result and fake.api_key not in result


def test_ca_bundle_trusts_a_corporate_ca(tmp_path, ca, ca_file) -> None:  # type: ignore[no-untyped-def]
    with tls_fake(tmp_path, ca, "127.0.0.1", "localhost") as (fake, url):
        settings = load(tmp_path, upstream_table(ca_file) + fts_table("fts", fake, url))
        result = asyncio.run(first_logins(settings))["fts"]
        assert isinstance(result, Credential), result
        assert fake.is_valid(result.token) and fake.logins == 1


def test_ca_bundle_does_not_turn_off_the_host_name_check(tmp_path, ca, ca_file) -> None:  # type: ignore[no-untyped-def]
    with tls_fake(tmp_path, ca, "tokend-elsewhere.example.com") as (fake, url):
        settings = load(tmp_path, upstream_table(ca_file) + fts_table("fts", fake, url))
        result = asyncio.run(first_logins(settings))["fts"]
        assert fake.login_attempts == 0
    assert isinstance(result, str) and "CERTIFICATE_VERIFY_FAILED" in result
    assert "mismatch" in result


def test_ca_bundle_adds_to_the_default_trust_store(ca_file) -> None:  # type: ignore[no-untyped-def]
    default, extended = trust_store(), trust_store(ca_file)
    assert len(default.get_ca_certs()) > 100  # certifi's Mozilla bundle
    assert len(extended.get_ca_certs()) == len(default.get_ca_certs()) + 1
    alone = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    alone.load_verify_locations(cafile=ca_file)
    [corporate] = alone.get_ca_certs()
    assert corporate in extended.get_ca_certs() and corporate not in default.get_ca_certs()
    for context in (default, extended):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def _der(ca: trustme.CA) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode("ascii"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("directory", "cannot be read (Is a directory)"),
        (b"", "holds no certificate that loads; it must be PEM"),
        (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n", "it must be PEM"),
        (_der, "it must be PEM"),
        (lambda ca: ca.private_key_pem.bytes(), "it must be PEM"),
    ],
    ids=["missing", "directory", "empty", "garbled", "der", "key-only"],
)
def test_a_bad_ca_bundle_is_a_config_error_naming_the_field(tmp_path, ca, content, expected) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "bundle.pem"
    if content == "directory":
        bundle.mkdir()
    elif content is not None:
        bundle.write_bytes(content(ca) if callable(content) else content)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, upstream_table(bundle))
    [problem] = caught.value.problems
    assert problem.startswith(f'field "upstream.ca_bundle": CA bundle {bundle} ') and expected in problem


def test_there_is_no_setting_that_turns_verification_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[upstream]\nverify = false\n")
    assert caught.value.problems == ['field "upstream.verify": is not a known setting (a typo?)']


# --- proxies ----------------------------------------------------------------------------------------------


def test_loopback_upstreams_never_go_through_the_environment_s_proxy(  # type: ignore[no-untyped-def]
    tmp_path, fakes: FakeProviders, ca, ca_file, monkeypatch
) -> None:
    with tls_fake(tmp_path, ca, "127.0.0.1", "localhost") as (tls, tls_url):
        # http:// on 127.0.0.1 (felloh, fts), http://localhost, https:// on 127.0.0.1 and on localhost.
        extra = (
            fts_table("fts_localhost", fakes.fintech_studios,
                      fakes.fintech_studios_url.replace("127.0.0.1", "localhost"))
            + fts_table("tls", tls, tls_url)
            + fts_table("tls_localhost", tls, tls_url.replace("127.0.0.1", "localhost"))
            + upstream_table(ca_file)
        )
        settings = Settings.load(write_config(tmp_path, fakes, extra=extra))

        async def go() -> tuple[dict[str, Credential | str], list[str]]:
            async with proxy_everywhere(monkeypatch) as proxy:
                return await first_logins(settings), proxy.seen

        results, seen = asyncio.run(go())
    assert seen == []
    assert {name: type(result) for name, result in results.items()} == dict.fromkeys(
        ("felloh", "fts", "flotiq", "fts_localhost", "tls", "tls_localhost"), Credential
    ), results


def test_other_upstreams_go_through_the_environment_s_proxy(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = load(tmp_path, fts_table("remote", FakeFintechStudios(), "https://login.example.test"))

    async def go() -> tuple[dict[str, Credential | str], list[str]]:
        async with proxy_everywhere(monkeypatch) as proxy:
            return await first_logins(settings), proxy.seen

    results, seen = asyncio.run(go())
    assert seen == ["CONNECT login.example.test:443 HTTP/1.1"]
    assert isinstance(results["remote"], str) and "could not reach https://login.example.test" in results["remote"]


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.felloh.com/token", "http://proxy:3128"),
        ({"https_proxy": "http://proxy:3128"}, "https://api.felloh.com/token", "http://proxy:3128"),
        ({"HTTPS_PROXY": "proxy:3128"}, "https://api.felloh.com/token", "http://proxy:3128"),
        ({"ALL_PROXY": "http://all:1", "HTTP_PROXY": "http://plain:2"}, "https://api.felloh.com/", "http://all:1"),
        ({"ALL_PROXY": "http://all:1", "HTTPS_PROXY": "http://tls:2"}, "https://api.felloh.com/", "http://tls:2"),
        ({"HTTP_PROXY": "http://plain:2"}, "https://api.felloh.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "felloh.com"}, "https://api.felloh.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.org, .felloh.com"}, "https://api.felloh.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "felloh.com"}, "https://notfelloh.com/", "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://api.felloh.com/", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://127.0.0.5:8443/", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "http://localhost:8080/", None),
        ({"ALL_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://[::1]:8443/", None),
        ({"ALL_PROXY": "http://p:1"}, "https://LocalHost/", None),
    ],
)
def test_proxies_follow_the_environment_except_for_loopback(monkeypatch, environment, url, expected) -> None:  # type: ignore[no-untyped-def]
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Proxies.from_environment().for_url(httpx.URL(url)) == expected


def test_an_unusable_proxy_variable_is_a_config_error_that_hides_its_url(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HTTPS_PROXY", "ftp://ops:hunter2@proxy.example.com:21")
    settings = load(tmp_path, "")
    with pytest.raises(ConfigError) as caught:
        build_client(settings.upstream.ca_bundle)
    assert "$HTTPS_PROXY" in caught.value.message and "hunter2" not in caught.value.message


def test_a_transport_handed_in_is_used_as_is_with_the_client_options(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")  # would refuse the connection if it were used
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "https://elsewhere.example.com/"})

    async def go() -> httpx.Response:
        async with build_client(load(tmp_path, "").upstream.ca_bundle, httpx.MockTransport(handler)) as client:
            return await client.post("https://login.example.test/token")

    response = asyncio.run(go())
    assert response.status_code == 302  # not followed: a redirect would carry the credentials elsewhere
    assert [str(request.url) for request in seen] == ["https://login.example.test/token"]
    assert seen[0].headers["user-agent"].startswith("tokend/")
