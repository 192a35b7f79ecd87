"""Any static API key: no login, no expiry; served as a header (with a scheme) and/or a query parameter."""

from __future__ import annotations

from typing import Literal

import httpx
from pydantic import model_validator

from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import static_credential
from tokend.redact import Redactor


class StaticConfig(ProviderBase):
    """Any static API key, served as a header (with an optional scheme) and/or a query parameter."""

    kind: Literal["static"]
    key: Secret
    header: str | None = "Authorization"
    scheme: str = "Bearer"  # "" sends the key bare, as Flotiq's X-AUTH-TOKEN wants
    query_param: str | None = None
    token_type: str = "api_key"

    @model_validator(mode="after")
    def _served_somehow(self) -> StaticConfig:
        if not self.header and not self.query_param:
            raise ValueError("set header or query_param (or both): how clients send the key")
        return self


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


EXAMPLE = """\
[providers.maps]
kind = "static"                            # any API key: no login, no expiry
key = { env = "MAPS_API_KEY" }
header = "Authorization"                   # header = "" to send none
scheme = "Bearer"                          # "" sends the key bare
# query_param = "key"                      # also (or instead) as a query parameter
"""

KIND = Kind("static", StaticConfig, "tokend.providers.static:StaticKey", example=EXAMPLE)
