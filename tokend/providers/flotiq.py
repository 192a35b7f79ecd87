"""Flotiq: static API keys made in the Flotiq panel; there is no login, and keys never expire.

A key is sent as the `X-AUTH-TOKEN` header or the `?auth_token=` query parameter; tokend serves both.
"""

from __future__ import annotations

from typing import Literal

import httpx

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import static_credential
from tokend.redact import Redactor

FLOTIQ_URL = "https://api.flotiq.com"


class FlotiqConfig(ProviderBase):
    kind: Literal["flotiq"]
    base_url: UpstreamURL = FLOTIQ_URL
    api_key: Secret
    token_type: Literal["api_key"] = "api_key"

    def _default_api_url(self) -> str:
        return self.base_url


class Flotiq:
    def __init__(self, name: str, config: FlotiqConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return static_credential(
            self.config.api_key.get(), token_type=self.config.token_type,
            header="X-AUTH-TOKEN", scheme="", query_param="auth_token",
        )


EXAMPLE = """\
[providers.flotiq]
kind = "flotiq"
api_key = { env = "FLOTIQ_API_KEY" }       # a key made in the Flotiq panel (read-only is best); no login
"""

KIND = Kind("flotiq", FlotiqConfig, "tokend.providers.flotiq:Flotiq", example=EXAMPLE)
