"""Flotiq: static API keys made in the Flotiq panel; there is no login, and keys never expire.

A key is sent as the `X-AUTH-TOKEN` header or the `?auth_token=` query parameter; tokend serves both.
"""

from __future__ import annotations

import httpx

from tokend.config import FlotiqConfig
from tokend.credential import Credential
from tokend.providers.base import static_credential
from tokend.redact import Redactor


class Flotiq:
    def __init__(self, name: str, config: FlotiqConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return static_credential(
            self.config.api_key.get(), token_type=self.config.token_type,
            header="X-AUTH-TOKEN", scheme="", query_param="auth_token",
        )
