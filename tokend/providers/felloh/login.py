"""Felloh: a public and private key pair exchanged for a bearer token with an absolute expiry.

`POST {base}/token` with JSON `{"public_key", "private_key"}` answers
`{"data": {"token", "expiry_time", "type": "BEARER"}, "errors": [...], "meta": {"request_id", ...}}`.
JSON only, with `Content-Type` and `Accept: application/json` on every request.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import httpx
from pydantic import model_validator

from tokend.config.fields import Duration, UpstreamURL
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.providers.base import ProviderBase
from tokend.providers.exchange import (
    LoginRequest,
    bearer_credential,
    exchange,
    limits,
    malformed,
    number_or_none,
)
from tokend.redact import Redactor

FELLOH_URLS = {"production": "https://api.felloh.com", "sandbox": "https://sandbox.felloh.com"}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class FellohConfig(ProviderBase):
    NOT_LOGIN: ClassVar[frozenset[str]] = ProviderBase.NOT_LOGIN | {"organisation", "rotate_every"}  # keys

    kind: Literal["felloh"]
    environment: Literal["production", "sandbox"] | None = None
    base_url: UpstreamURL | None = None
    public_key: Secret
    private_key: Secret
    organisation: str | None = None  # the organisation ID whose keys `tokend felloh` manages by default
    rotate_every: Duration | None = None  # rotate the key pair when the key files are this old

    @model_validator(mode="after")
    def _environment_or_url(self) -> FellohConfig:
        # No silent default: a sandbox key sent to production (or the reverse) fails in confusing ways.
        if self.environment is None and self.base_url is None:
            raise ValueError('set environment = "production" or "sandbox" (or base_url)')
        if self.rotate_every is not None:
            if self.organisation is None:
                raise ValueError("rotate_every needs organisation, the organisation ID the keys belong to")
            if self.public_key.path is None or self.private_key.path is None:
                raise ValueError("rotate_every needs public_key and private_key as { file = ... } references, "
                                 "so that tokend can write the new pair")
        return self

    @property
    def url(self) -> str:
        return self.base_url or FELLOH_URLS[self.environment or "production"]

    def _default_api_url(self) -> str:
        return self.url  # Felloh's API is on the same host as its token endpoint


def describe(body: Any) -> tuple[str | None, str | None]:
    """Felloh's `meta.request_id`, and the best sentence it gives about an error."""
    if not isinstance(body, dict):
        return None, None
    meta = body["meta"] if isinstance(body.get("meta"), dict) else {}
    request_id = meta.get("request_id") if isinstance(meta.get("request_id"), str) else None
    message = meta.get("message") if isinstance(meta.get("message"), str) else None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0].get("message") or errors[0].get("title")
        message = first if isinstance(first, str) else message
    return request_id, message


class Felloh:
    def __init__(self, name: str, config: FellohConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        login = LoginRequest(
            provider=self.name,
            method="POST",
            url=f"{self.config.url}/token",
            json={"public_key": self.config.public_key.get(), "private_key": self.config.private_key.get()},
            headers=JSON_HEADERS,
            **limits(self.config),
            redactor=self._redactor,
            describe=describe,
        )
        body, request_id = await exchange(client, login)
        data = body.get("data") if isinstance(body, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no data.token", request_id)
        assert isinstance(data, dict)
        return bearer_credential(
            self.config, token, number_or_none(data.get("expiry_time")), request_id=request_id
        )
