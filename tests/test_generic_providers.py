"""Any token API by configuration: OAuth2 client credentials, declarative `http` logins, `static` keys."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon import tokend_command, write_config
from tests.test_api import serving, settings_for
from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.errors import ConfigError, CredentialsRejected, UpstreamError
from tokend.providers.base import ProviderBase
from tokend.providers.http import HttpConfig
from tokend.providers.oauth2 import OAuth2ClientCredentialsConfig
from tokend.renewal.logins import login_once
from tokend.testing import FakeOAuth2, FakeServer, FakeTokenAPI

HTTP_PAGE = Path(__file__).parent.parent / "docs" / "providers" / "http.md"


@pytest.fixture
def oauth() -> Iterator[tuple[FakeOAuth2, str]]:
    fake = FakeOAuth2(client_secret="s3cret with spaces&symbols=")
    with FakeServer(fake.app) as server:
        yield fake, server.url


def login(config: ProviderBase) -> Credential:
    settings = Settings.model_construct(providers={"p": config})  # a valid config, built in the test
    return asyncio.run(login_once("p", settings))


def oauth_config(url: str, **options: Any) -> OAuth2ClientCredentialsConfig:
    return OAuth2ClientCredentialsConfig(
        kind="oauth2_client_credentials", token_url=f"{url}/oauth/token", client_id="demo-client",
        client_secret="s3cret with spaces&symbols=", **options,
    )


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_oauth2_client_credentials(oauth, auth_method) -> None:  # type: ignore[no-untyped-def]
    fake, url = oauth
    config = oauth_config(url, auth_method=auth_method, scope=["read", "write"], audience="https://api.test",
                          extra={"resource": "r1"})
    credential = login(config)
    assert fake.last_auth_method == auth_method
    form = fake.last_form
    assert (form["grant_type"], form["scope"], form["audience"], form["resource"]) == (
        "client_credentials", "read write", "https://api.test", "r1")
    assert ("client_secret" in form) == (auth_method == "client_secret_post")
    assert credential.token_type == "Bearer" and credential.headers == {"Authorization": f"Bearer {credential.token}"}
    assert credential.expires_at is not None and 3590 < credential.expires_at - credential.obtained_at <= 3600
    assert httpx.get(url + fake.protected_path, headers=credential.headers).status_code == 200


def test_oauth2_errors_are_reported_with_their_code_and_description(oauth) -> None:  # type: ignore[no-untyped-def]
    fake, url = oauth
    fake.client_secret = "rotated"
    with pytest.raises(CredentialsRejected) as caught:
        login(oauth_config(url))
    assert caught.value.message == "login answered 401: invalid_client: Client authentication failed"
    assert "s3cret" not in caught.value.message


def token_api_config(url: str, expiry_format: str, **options: Any) -> HttpConfig:
    expiry = {} if expiry_format == "jwt" else {"expiry_pointer": "/result/session/expiry"}
    return HttpConfig.model_validate({
        "kind": "http", "url": f"{url}/session", "secrets": {"pw": "demo-api-password"},
        "headers": {"X-Client": "demo"}, "json": {"user": "demo", "password": "{pw}"},
        "token_pointer": "/result/session/key", "expiry_format": expiry_format, "request_id_pointer": "/trace",
        "serve_headers": {"Authorization": "Session {token}"}, **expiry, **options,
    })


@pytest.mark.parametrize("expiry_format", ["unix", "unix_ms", "iso8601", "seconds", "jwt"])
def test_http_login_reads_every_expiry_format(expiry_format) -> None:  # type: ignore[no-untyped-def]
    fake = FakeTokenAPI(expiry_format=expiry_format, lifetime=1800)
    with FakeServer(fake.app) as server:
        credential = login(token_api_config(server.url, expiry_format))
        assert fake.is_valid(credential.token) and credential.request_id
        assert credential.expires_at is not None
        assert abs(credential.expires_at - (credential.obtained_at + 1800)) <= 2
        assert credential.expiry_note is None
        answer = httpx.get(server.url + fake.protected_path, headers=credential.headers)
        assert answer.status_code == 200


def test_a_pointer_that_finds_nothing_names_provider_field_and_pointer() -> None:
    fake = FakeTokenAPI()
    with FakeServer(fake.app) as server:
        with pytest.raises(UpstreamError) as caught:
            login(token_api_config(server.url, "unix", token_pointer="/result/session/token"))
        assert caught.value.provider == "p" and not caught.value.retryable
        assert caught.value.message.startswith(
            'the login answer holds no value at token_pointer "/result/session/token" (request id ')
        # A pointer to an object, not a string: named the same way.
        with pytest.raises(UpstreamError, match='holds no non-empty string at token_pointer "/result"'):
            login(token_api_config(server.url, "unix", token_pointer="/result"))
        with pytest.raises(UpstreamError, match='holds no value at expiry_pointer "/result/expiry"'):
            login(token_api_config(server.url, "unix", expiry_pointer="/result/expiry"))
        with pytest.raises(UpstreamError, match='holds no iso8601 expiry at expiry_pointer'):
            login(token_api_config(server.url, "iso8601"))  # the fake sends Unix seconds


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('token_pointer = "data/token"', 'field "token_pointer": JSON pointer "data/token" must start with "/"'),
        ('token_pointer = "/t"\njson = { password = "{pasword}" }', "json.password: template '{pasword}' names"
         " pasword; known: {pw}"),
        ('token_pointer = "/t"\nserve_headers = { Authorization = "Bearer {tok}" }', "names tok; known: {pw}, {token}"),
        ('token_pointer = "/t"\njson = {}\nform = {}', "set json or form as the login body, not both"),
        ('token_pointer = "/t"\nexpiry_format = "jwt"\nexpiry_pointer = "/e"', "remove expiry_pointer"),
    ],
)
def test_http_config_errors_name_the_field(tmp_path, table, problem) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tokend.toml"
    config.write_text(f'[providers.api]\nkind = "http"\nurl = "https://api.test/login"\nsecrets = {{ pw = "x" }}\n'
                      f"{table}\n")
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith('provider "api"') and problem in caught.value.problems[0]


def test_static_keys_serve_header_scheme_and_query() -> None:
    from tokend.providers.static import StaticConfig

    bearer = login(StaticConfig(kind="static", key="k-123"))
    assert (bearer.headers, bearer.query, bearer.expires_at) == ({"Authorization": "Bearer k-123"}, {}, None)
    bare = login(StaticConfig(kind="static", key="k-123", header="X-Api-Key", scheme="", query_param="key"))
    assert (bare.headers, bare.query) == ({"X-Api-Key": "k-123"}, {"key": "k-123"})
    with pytest.raises(ValueError, match="set header or query_param"):
        StaticConfig(kind="static", key="k", header=None)


def seeds_as_config() -> str:
    text = HTTP_PAGE.read_text()
    section = text.split("<!-- seeds-as-config -->")[1].split("<!-- /seeds-as-config -->")[0]
    return "\n".join(re.findall(r"```toml\n(.*?)```", section, re.S))


def test_the_docs_re_expressed_seed_providers_behave_like_the_built_in_ones(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in {"FELLOH_PUBLIC_KEY": fakes.felloh.public_key, "FELLOH_PRIVATE_KEY": fakes.felloh.private_key,
                        "FTS_API_KEY": fakes.fintech_studios.api_key, "FTS_PASSWORD": fakes.fintech_studios.password,
                        "FLOTIQ_API_KEY": sorted(fakes.flotiq.api_keys)[0]}.items():
        monkeypatch.setenv(name, value)
    extra = (seeds_as_config().replace("https://sandbox.felloh.com", fakes.felloh_url)
             .replace("https://fts.example.com", fakes.fintech_studios_url)
             .replace("ops@example.com", fakes.fintech_studios.email))
    settings = settings_for(tmp_path, fakes, extra=extra)
    pairs = {"felloh": "felloh-http", "fts": "fts-http", "flotiq": "flotiq-static"}
    upstream = {"felloh": (fakes.felloh, fakes.felloh_url), "fts": (fakes.fintech_studios, fakes.fintech_studios_url),
                "flotiq": (fakes.flotiq, fakes.flotiq_url)}

    async def go() -> None:
        async with serving(settings) as client:
            for built_in, declared in pairs.items():
                ours = (await client.get(f"/token/{built_in}")).json()
                theirs = (await client.get(f"/token/{declared}")).json()
                fake, url = upstream[built_in]
                for served in (ours, theirs):
                    assert httpx.get(url + fake.protected_path, headers=served["headers"]).status_code == 200
                assert theirs["token_type"] == ours["token_type"]
                assert list(theirs["headers"]) == list(ours["headers"])
                assert theirs["query"].keys() == ours["query"].keys()
                assert (theirs["expires_in"] is None) == (ours["expires_in"] is None)
                if ours["expires_in"] is not None:
                    assert abs(theirs["expires_in"] - ours["expires_in"]) <= 2
                shape = {k: v.replace(ours["token"], "T") for k, v in ours["headers"].items()}
                assert shape == {k: v.replace(theirs["token"], "T") for k, v in theirs["headers"].items()}
            status = (await client.get("/status")).json()["providers"]
            assert status["felloh-http"]["last_request_id"]  # Felloh's meta.request_id, by pointer

    asyncio.run(go())


def test_check_login_shows_what_would_be_served_without_secrets(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes)
    result = subprocess.run(tokend_command("--config", str(config), "check", "--login", "fts"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token_line = next(line for line in lines if line.startswith("  token: "))
    assert re.fullmatch(r"  token: eyJh…\S{4} \(Bearer\)", token_line)
    assert "  header x-api-key: ***" in lines
    assert any(re.fullmatch(r"  header Authorization: Bearer eyJh…\S{4}", line) for line in lines)
    fts = fakes.fintech_studios
    for secret in (fts.api_key, fts.password, *fts.valid_tokens()):
        assert secret not in result.stdout
    fakes.felloh.fail(503)
    failed = subprocess.run(tokend_command("--config", str(config), "check", "--login", "felloh"),
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 5 and "login to felloh failed: login answered 503" in failed.stderr
