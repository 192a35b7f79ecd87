"""The refresh token grant without a network: httpx's MockTransport answers as a server would, and the test
reads what was sent. Which refresh token is spent, how the client authenticates, what each error means."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from typing import Any

import httpx
import pytest

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, SignInNeeded
from tokend.providers.oauth2_refresh_token.grant import OAuth2RefreshToken, OAuth2RefreshTokenConfig
from tokend.redact import Redactor

sent: list[httpx.Request] = []


def provider(**settings: Any) -> OAuth2RefreshToken:
    fields: dict[str, Any] = {"kind": "oauth2_refresh_token", "token_url": "https://auth.example.com/token",
                              "client_id": "app id", "refresh_token": "configured-rt", **settings}
    config = OAuth2RefreshTokenConfig.model_validate(fields)
    return OAuth2RefreshToken("me", config, Redactor())


def fetch(login: OAuth2RefreshToken, answer: httpx.Response, current: Credential | None = None) -> Credential:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer

    async def run() -> Credential:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await login.fetch_from(client, current)

    return asyncio.run(run())


def form() -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(sent[-1].content.decode()))


def held(refresh: str) -> Credential:
    return Credential(token="old", token_type="Bearer", expires_at=0.0, headers={}, refresh_token=refresh)


def test_the_held_refresh_token_is_spent_and_a_rotated_one_replaces_it() -> None:
    answer = httpx.Response(200, json={"access_token": "at-1", "expires_in": 300, "refresh_token": "rt-2"})
    credential = fetch(provider(), answer, held("rt-1"))
    assert form()["refresh_token"] == "rt-1" and form()["grant_type"] == "refresh_token"
    assert (credential.token, credential.refresh_token) == ("at-1", "rt-2")
    assert credential.headers == {"Authorization": "Bearer at-1"}
    assert "rt-2" not in repr(credential)


def test_without_a_held_one_the_configured_one_is_spent_and_kept_when_the_server_does_not_rotate() -> None:
    credential = fetch(provider(), httpx.Response(200, json={"access_token": "at-1", "expires_in": 300}))
    assert form()["refresh_token"] == "configured-rt" and credential.refresh_token == "configured-rt"


@pytest.mark.parametrize(("settings", "basic", "fields"), [
    ({}, None, {"client_id": "app id"}),  # a public client names itself
    ({"client_secret": "s3cret"}, "app%20id:s3cret", {}),
    ({"client_secret": "s3cret", "auth_method": "client_secret_post"}, None,
     {"client_id": "app id", "client_secret": "s3cret"}),
])
def test_client_authentication(settings: dict[str, Any], basic: str | None, fields: dict[str, str]) -> None:
    fetch(provider(**settings), httpx.Response(200, json={"access_token": "a", "refresh_token": "b"}))
    authorization = sent[-1].headers.get("authorization")
    assert authorization == (None if basic is None else "Basic " + base64.b64encode(basic.encode()).decode())
    assert {key: form()[key] for key in ("client_id", "client_secret") if key in form()} == fields


def test_invalid_grant_asks_for_a_sign_in_and_invalid_client_is_refused_credentials() -> None:
    login = provider(device_authorization_url="https://auth.example.com/device")
    with pytest.raises(SignInNeeded) as refused:
        fetch(login, httpx.Response(400, json={"error": "invalid_grant", "error_description": "reused"}))
    assert refused.value.command == "tokend login me" and "run `tokend login me`" in refused.value.message
    with pytest.raises(CredentialsRejected) as bad_client:
        fetch(login, httpx.Response(400, json={"error": "invalid_client"}))
    assert not isinstance(bad_client.value, SignInNeeded)


def test_no_refresh_token_at_all_asks_for_a_sign_in_without_a_request() -> None:
    login = provider(refresh_token=None, device_authorization_url="https://auth.example.com/device")
    before = len(sent)
    with pytest.raises(SignInNeeded, match="holds no refresh token yet"):
        fetch(login, httpx.Response(500))
    assert len(sent) == before
