"""FinTech Studios: a static `x-api-key` plus an email and password exchanged for a JWT.

`POST {base}/auth/token` with JSON `{"email", "password"}` and the `x-api-key` header answers
`{"token": "<JWT>", "expires": <Unix seconds>, "userId": "..."}`. Every API call then needs both headers,
and the provider asks for a backend refresher instead of a login per request: tokend is that refresher.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import (
    LoginRequest,
    bearer_credential,
    exchange,
    limits,
    malformed,
    number_or_none,
)
from tokend.redact import Redactor


def describe(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict):
        return None, None
    for key in ("message", "error", "detail"):
        if isinstance(body.get(key), str):
            return None, body[key]
    return None, None



class FintechStudiosConfig(ProviderBase):
    kind: Literal["fintech_studios"]
    base_url: UpstreamURL
    api_key: Secret
    email: str = Field(min_length=3)
    password: Secret

    @property
    def url(self) -> str:
        return self.base_url

    def _default_api_url(self) -> str:
        return self.base_url


class FintechStudios:
    def __init__(self, name: str, config: FintechStudiosConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        api_key = self.config.api_key.get()
        login = LoginRequest(
            provider=self.name,
            method="POST",
            url=f"{self.config.url}/auth/token",
            json={"email": self.config.email, "password": self.config.password.get()},
            headers={"x-api-key": api_key, "Accept": "application/json"},
            **limits(self.config),
            redactor=self._redactor,
            describe=describe,
        )
        body, _ = await exchange(client, login)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no token")
        return bearer_credential(
            self.config, token, number_or_none(body.get("expires")), extra_headers={"x-api-key": api_key}
        )


EXAMPLE = """\
[providers.fts]
kind = "fintech_studios"
base_url = "https://fts.example.com"       # your FinTech Studios API: it has no public default
api_key = { env = "FTS_API_KEY" }          # the static x-api-key, served beside the token
email = "ops@example.com"
password = { env = "FTS_PASSWORD" }
"""

KIND = Kind("fintech_studios", FintechStudiosConfig, "tokend.providers.fintech_studios:FintechStudios", example=EXAMPLE)
