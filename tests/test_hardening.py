"""Hostile and broken input: secrets in every encoding an upstream may echo them in, senseless expiries,
tokens no client could send, decompression bombs, and config files that are not what they claim to be.
Each test names the item of the outside attack-and-fault run it covers."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon import Daemon as DaemonProcess
from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.daemon import Daemon
from tokend.errors import ConfigError, TokenUnavailable, UpstreamError
from tokend.providers import build_provider
from tokend.providers.base import ProviderBase
from tokend.providers.expiry import SKEWED_LIFETIME, resolve_expiry
from tokend.providers.felloh import FellohConfig
from tokend.providers.fintech_studios import FintechStudiosConfig
from tokend.providers.http import HttpConfig
from tokend.providers.oauth2 import OAuth2ClientCredentialsConfig
from tokend.redact import Redactor, basic_credentials, untrusted
from tokend.testing import FakeProviders

Handler = Callable[[httpx.Request], httpx.Response]
PASSWORD = 'pa"ss\\w<o>rd&=+ é'  # every character some encoding changes
NOW = 1_800_000_000.0


def login(config: ProviderBase, handler: Handler) -> Credential:
    redactor = Redactor(secret.get() for secret in config.secrets().values())
    provider = build_provider("p", config, redactor)

    async def go() -> Credential:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await provider.fetch(client)

    return asyncio.run(go())


def failure(config: ProviderBase, handler: Handler) -> UpstreamError:
    with pytest.raises(UpstreamError) as raised:
        login(config, handler)
    return raised.value


def fts(**options: Any) -> FintechStudiosConfig:
    return FintechStudiosConfig(kind="fintech_studios", base_url="https://fts.test", api_key="ak-123456",
                                email="ops@example.com", password=PASSWORD, **options)


FELLOH = FellohConfig(kind="felloh", base_url="https://felloh.test", public_key="pk-1", private_key="sk-private-9")


# -- 1: a stray byte in a secret file ------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["VALUE-abc\n\n", "VAL\rUE-abc\n", "VALUE-abc\n \n", "VAL\x00UE-abc"])
def test_a_secret_file_with_a_control_character_is_refused_without_showing_it(tmp_path: Path, content: str) -> None:
    (tmp_path / "key").write_text(content)
    (tmp_path / "key").chmod(0o600)
    config = tmp_path / "tokend.toml"
    config.write_text('[providers.fts]\nkind = "fintech_studios"\nbase_url = "https://fts.test"\n'
                      'api_key = { file = "key" }\nemail = "ops@example.com"\npassword = "pw-xyz-123"\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(config)
    text = " ".join(refused.value.problems)
    assert "VALUE" not in text and "VAL" not in text
    assert f"{tmp_path / 'key'}" in text and "remove it" in text


def test_an_http_library_error_quoting_a_header_never_reaches_the_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value b'ak-123456\\n'")

    error = failure(fts(), handler)
    assert "ak-123456" not in error.message and "not valid HTTP" in error.message


# -- 2, 3, 4: what an upstream echoes --------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [
    lambda s: json.dumps(s)[1:-1],
    lambda s: __import__("urllib.parse").parse.quote_plus(s),
    lambda s: __import__("html").escape(s),
], ids=["json", "form", "html"])
def test_a_secret_echoed_in_any_encoding_tokend_sent_it_in_is_scrubbed(encode: Callable[[str], str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=f"<html>login failed for {encode(PASSWORD)}</html>")

    error = failure(fts(), handler)
    assert encode(PASSWORD) not in error.message and "***" in error.message, error.message


def test_an_echoed_basic_authorization_header_is_scrubbed() -> None:
    config = OAuth2ClientCredentialsConfig(kind="oauth2_client_credentials", token_url="https://idp.test/token",
                                           client_id="client-7", client_secret="s3cret-value")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text=f"got Authorization: {request.headers['authorization']}")

    error = failure(config, handler)
    assert basic_credentials("client-7", "s3cret-value") not in error.message and "***" in error.message


def test_felloh_request_ids_are_scrubbed_cut_and_escaped() -> None:
    ids = ["sk-private-9", "line one\nINFO forged log line", "x" * 1_000_000, "\x1b[31mred\x1b[0m"]
    for request_id in ids:
        def handler(request: httpx.Request, request_id: str = request_id) -> httpx.Response:
            return httpx.Response(502, json={"data": None, "errors": [{"title": "no"}],
                                             "meta": {"request_id": request_id}})

        error = failure(FELLOH, handler)
        assert error.request_id is not None
        assert "sk-private-9" not in error.message + error.request_id
        assert "\n" not in error.message and "\x1b" not in error.request_id and len(error.request_id) <= 100
        assert len(error.message) < 1000


def test_untrusted_text_is_escaped_and_bounded() -> None:
    text = untrusted("a\x1b[2Jb\u2028c\ud800" + "z" * 10_000, Redactor(), 50)
    assert "\x1b" not in text and "\u2028" not in text and "\ud800" not in text and len(text) == 50


# -- 5, 6, 7: senseless expiries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reported", [math.nan, math.inf, -math.inf, -0.0, float(10**300), NOW + 0.5, NOW - 0.5])
def test_every_senseless_expiry_gives_a_servable_finite_lifetime(reported: float) -> None:
    expires_at, note = resolve_expiry(reported, "opaque", now=NOW, default_lifetime=3600, max_lifetime=86400)
    assert math.isfinite(expires_at) and NOW + 2 <= expires_at <= NOW + 86400 and note


def test_a_clock_a_moment_ahead_is_treated_like_one_behind() -> None:
    ahead, _ = resolve_expiry(NOW + 0.5, "t", now=NOW, default_lifetime=3600, max_lifetime=86400)
    assert ahead == NOW + SKEWED_LIFETIME


@pytest.mark.parametrize("expiry", ['"NaN"', "NaN", '"Infinity"', "-0", "9" * 400, '"1e999"'])
def test_felloh_odd_expiries_never_fail_or_loop(expiry: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = '{"data": {"token": "tok-1", "expiry_time": ' + expiry + ', "type": "BEARER"}, "meta": {}}'
        return httpx.Response(200, text=body, headers={"content-type": "application/json"})

    credential = login(FELLOH, handler)
    assert credential.expires_at is not None and math.isfinite(credential.expires_at)
    assert credential.expires_at - time.time() >= 2


def test_an_iso8601_expiry_at_the_end_of_time_is_capped_not_read_as_milliseconds() -> None:
    config = HttpConfig.model_validate({"kind": "http", "url": "https://api.test/login", "token_pointer": "/t",
                                        "expiry_pointer": "/e", "expiry_format": "iso8601", "max_lifetime": 7200})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"t": "tok", "e": "9999-12-31T23:59:59Z"})

    credential = login(config, handler)
    assert credential.expires_at is not None and 7100 < credential.expires_at - time.time() <= 7200


def test_a_deeply_nested_answer_is_a_malformed_login_not_a_crash() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="[" * 100_000 + "]" * 100_000, headers={"content-type": "application/json"})

    assert "not with JSON" in failure(FELLOH, handler).message


# -- 8: tokens no client can use ------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["tok\r\nX-Injected: 1", "tok\x00", "\\ud800tok"])
def test_a_token_no_client_could_send_is_a_failed_login(token: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        encoded = json.dumps(token).replace("\\\\ud800", "\\ud800")  # a lone surrogate, escaped as JSON allows
        body = f'{{"token": {encoded}, "expires": {int(time.time()) + 600}}}'
        return httpx.Response(200, text=body, headers={"content-type": "application/json"})

    settings_ = Settings.model_construct(providers={"fts": fts()})

    async def go() -> None:
        async with Daemon(settings_, transport=httpx.MockTransport(handler)) as daemon:
            await daemon.manager.settled()
            assert not daemon.manager.ready()
            with pytest.raises(TokenUnavailable) as unavailable:
                await daemon.manager.get("fts")
            assert "no client could use" in unavailable.value.message

    asyncio.run(go())


# -- 9: decompression bomb --------------------------------------------------------------------------------------------


def test_a_login_answer_that_inflates_past_the_limit_fails() -> None:
    bomb = gzip.compress(b'{"token": "' + b"0" * (64 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < 1024 * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bomb, headers={"content-encoding": "gzip",
                                                          "content-type": "application/json"})

    error = failure(fts(), handler)
    assert "larger than 1048576 bytes" in error.message


def test_the_answer_limit_is_a_setting() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token": "t" * 5000, "expires": time.time() + 600})

    assert "larger than 4096" in failure(fts(max_answer_bytes=4096), handler).message
    assert login(fts(), handler).token == "t" * 5000


# -- 12, 13: config input ---------------------------------------------------------------------------------------


def test_a_latin1_comment_nested_toml_and_infinite_lifetimes_are_config_errors(tmp_path: Path) -> None:
    cases = {
        b"# caf\xe9\n[server]\nport = 9000\n": "not UTF-8",
        b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n": "too deeply",
        b'[providers.s]\nkind = "static"\nkey = "k"\ndefault_lifetime = inf\nmax_lifetime = inf\n': "finite",
    }
    for content, expected in cases.items():
        path = tmp_path / "tokend.toml"
        path.write_bytes(content)
        with pytest.raises(ConfigError) as refused:
            Settings.load(path)
        assert expected in " ".join([refused.value.message, *refused.value.problems])


def test_environment_overrides_are_named_when_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text("[server]\nport = 9000\n")
    monkeypatch.setenv("TOKEND_SERVER__PORT", "abc")
    with pytest.raises(ConfigError) as refused:
        Settings.load(path)
    assert refused.value.problems[0].startswith("environment variable TOKEND_SERVER__PORT:")
    monkeypatch.delenv("TOKEND_SERVER__PORT")
    monkeypatch.setenv("TOKEND_PROVIDERS", "{bad json")
    with pytest.raises(ConfigError) as bad_json:
        Settings.load(path)
    assert "TOKEND_PROVIDERS" in bad_json.value.message


def test_a_union_setting_of_the_wrong_type_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text('[providers.o]\nkind = "oauth2_client_credentials"\ntoken_url = "https://idp.test/t"\n'
                    'client_id = "c"\nclient_secret = "s"\nscope = 5\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(path)
    assert refused.value.problems == ['provider "o", field "scope": must be a string or a list of strings']


def test_a_url_holding_a_key_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text('[providers.o]\nkind = "oauth2_client_credentials"\n'
                    'token_url = "https://user:pw-777@idp.test/t?api_key=KEY-999#frag"\nclient_id = "c"\n'
                    'client_secret = "s"\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(path)
    text = " ".join(refused.value.problems)
    assert "KEY-999" not in text and "pw-777" not in text and "frag" not in text


def test_relative_secret_files_are_read_from_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "flotiq").write_text("flotiq-key-1\n")
    path = tmp_path / "tokend.toml"
    path.write_text('[providers.f]\nkind = "flotiq"\napi_key = { file = "keys/flotiq" }\n')
    monkeypatch.chdir("/")
    assert Settings.load(path).providers["f"].secrets()["api_key"].get() == "flotiq-key-1"
    path.write_text('[providers.f]\nkind = "flotiq"\napi_key = { file = "keys/missing" }\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(path)
    assert str(tmp_path / "keys" / "missing") in refused.value.problems[0]


TOML_PIECES = st.sampled_from([
    "[server]\n", "[providers.a]\n", "[providers.b]\n", "[clients.c]\n", "[upstream]\n", 'kind = "felloh"\n',
    'kind = "static"\n', 'kind = "oauth2_client_credentials"\n', 'kind = "http"\n', "port = 9000\n", "port = -1\n",
    'host = "0.0.0.0"\n', 'key = "0123456789abcdef0123"\n', 'key = { env = "NOPE" }\n', 'key = { file = "x" }\n',
    "timeout = inf\n", "timeout = nan\n", "timeout = 1e308\n", 'rotate_every = "9999999999999999999999d"\n',
    'base_url = "http://[::1"\n', 'token_url = "https://h.test/t"\n', 'url = "https://h.test:99999/"\n',
    "scope = 5\n", "scope = [1, 2]\n", 'providers = ["a"]\n', "socket_mode = 0o777\n", 'socket_mode = "999"\n',
    'environment = "sandbox"\n', 'public_key = "p"\n', 'private_key = "k"\n', "max_answer_bytes = 1\n",
    'token_pointer = "/t"\n', 'token_pointer = "t"\n', 'serve_headers = { A = "{nope}" }\n', "x = [[[[1]]]]\n",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(TOML_PIECES, max_size=12), noise=st.binary(max_size=12))
def test_any_config_file_loads_or_is_a_config_error(tmp_path: Path, pieces: list[str], noise: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes("".join(pieces).encode() + noise)
    try:
        Settings.load(path)
    except ConfigError as exc:
        assert exc.message and all(exc.problems)


# -- the same, end to end: what a client of the real daemon sees ------------------------------------------------------


def test_a_secret_echoed_escaped_never_reaches_status_or_a_503(tmp_path: Path, fakes: FakeProviders,
                                                                daemon_factory: Callable[..., DaemonProcess]) -> None:
    fakes.fintech_studios.password = PASSWORD
    daemon = daemon_factory(min_refresh_interval=0.1)
    time.sleep(0.3)  # past min_refresh_interval since the first login: the refresh logs in
    fakes.fintech_studios.fail(500, body=f"<p>bad password {__import__('html').escape(PASSWORD)}</p>")
    answer = daemon.post("/token/fts/refresh")
    assert answer.status_code == 502
    status = daemon.get("/status").text
    for form in (PASSWORD, json.dumps(PASSWORD)[1:-1], __import__("html").escape(PASSWORD)):
        assert form not in answer.text and form not in status and form not in daemon.log()


def test_a_past_expiry_beside_a_jwt_with_a_future_exp_uses_the_exp() -> None:
    import base64

    exp = int(NOW) + 900
    payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).rstrip(b"=").decode()
    token = f"eyJhbGciOiJIUzI1NiJ9.{payload}.sig"
    expires_at, note = resolve_expiry(NOW - 30, token, now=NOW, default_lifetime=3600, max_lifetime=86400)
    assert expires_at == exp and note is not None and "exp" in note
