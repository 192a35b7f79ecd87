"""Flotiq: static API keys made in the Flotiq panel; there is no login, and keys never expire.

A key is sent as the `X-AUTH-TOKEN` header or the `?auth_token=` query parameter; tokend serves both.
"""

from __future__ import annotations

import time

import httpx

from tokend.config import FlotiqConfig
from tokend.credential import Credential
from tokend.redact import Redactor


class Flotiq:
    def __init__(self, name: str, config: FlotiqConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        key = self.config.api_key.get()
        return Credential(
            token=key,
            token_type=self.config.token_type,
            expires_at=None,
            headers={"X-AUTH-TOKEN": key},
            query={"auth_token": key},
            obtained_at=time.time(),
        )
