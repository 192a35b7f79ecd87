"""Any static API key: no login, no expiry; served as a header (with a scheme) and/or a query parameter."""

from __future__ import annotations

import httpx

from tokend.config import StaticConfig
from tokend.credential import Credential
from tokend.providers.base import static_credential
from tokend.redact import Redactor


class StaticKey:
    def __init__(self, name: str, config: StaticConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        config = self.config
        return static_credential(
            config.key.get(), token_type=config.token_type, header=config.header, scheme=config.scheme,
            query_param=config.query_param,
        )
