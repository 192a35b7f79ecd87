"""The JWT bearer grant (RFC 7523 section 2.1) for any service that takes one: Salesforce's connected apps,
Apigee, Box, DocuSign and others. A JWT signed with the configured key, `iss` / `sub` / `aud` as the service
documents them, is posted as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`.

The answer is RFC 6749 section 5.1's; Salesforce's has no `expires_in` (the session lasts the org's
session timeout), so `default_lifetime` applies: set it to that timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret, SecretText, SecretValue
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import LoginRequest, limits
from tokend.providers.oauth2 import JWT_BEARER_GRANT, access_token_credential, describe, token_exchange
from tokend.providers.signing_keys import (
    Algorithm,
    checked_key,
    describe_key,
    key_identity,
    login_key,
    masked,
    optional_secret,
)
from tokend.redact import Redactor

if TYPE_CHECKING:
    from tokend.providers.signing_keys import SigningKey

__all__ = ["JWTBearer", "JWTBearerConfig"]

# Salesforce takes an assertion whose exp is at most three minutes away; short enough for every service.
ASSERTION_LIFETIME = 180
_OWN_CLAIMS = {"iss", "sub", "aud", "exp", "iat", "jti", "nbf"}


class JWTBearerConfig(ProviderBase):
    kind: Literal["jwt_bearer"]
    token_url: UpstreamURL
    private_key_passphrase: Secret | None = None  # before the key: the key's check reads it
    private_key: SecretText
    alg: Algorithm = "RS256"
    issuer: str = Field(min_length=1)  # Salesforce: the connected app's consumer key
    subject: str = Field(min_length=1)  # Salesforce: the user name to act as
    audience: str | None = None  # default token_url; Salesforce: https://login.salesforce.com (or test.)
    scope: str | list[str] | None = None
    claims: dict[str, Any] = {}  # further claims the service wants
    kid: str | None = None

    @property
    def url(self) -> str:
        return self.token_url

    @field_validator("private_key")
    @classmethod
    def _usable_key(cls, key: SecretValue, info: ValidationInfo) -> SecretValue:
        return checked_key(key, info, "private_key_passphrase")

    @model_validator(mode="after")
    def _consistent(self) -> JWTBearerConfig:
        from tokend.providers.signing_keys import load_key

        own = sorted(_OWN_CLAIMS & set(self.claims))
        if own:
            raise ValueError(f"claims must not set {', '.join(own)}: tokend sets those itself (issuer, subject, "
                             "audience, and fresh times and jti for every assertion)")
        key = load_key(self.private_key.get(), optional_secret(self.private_key_passphrase))
        try:
            key.check_algorithm(self.alg)
        except ValueError as exc:
            raise ValueError(f"alg: {exc}") from None
        return self

    def key_descriptions(self) -> dict[str, str]:
        return {"private_key": describe_key(self.private_key, self.private_key_passphrase)}

    def login_secrets(self) -> dict[str, str]:
        return {"private_key": key_identity(self.private_key, self.private_key_passphrase)}


class JWTBearer:
    def __init__(self, name: str, config: JWTBearerConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        self._key: SigningKey | None = None

    def _assertion(self) -> str:
        from tokend.providers.signing_keys import assertion_claims

        config = self.config
        if self._key is None:
            self._key = login_key(self.name, "private_key", config.private_key, config.private_key_passphrase)
        claims = assertion_claims(ASSERTION_LIFETIME, iss=config.issuer, sub=config.subject,
                                  aud=config.audience or config.token_url)
        header = {"kid": config.kid} if config.kid else None
        return masked(self._redactor, self.name, self._key.sign({**config.claims, **claims}, alg=config.alg,
                                                                header=header))

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        config = self.config
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion()}
        if config.scope:
            form["scope"] = config.scope if isinstance(config.scope, str) else " ".join(config.scope)
        login = LoginRequest(
            provider=self.name, method="POST", url=config.token_url, headers={"Accept": "application/json"},
            form=form, **limits(config), redactor=self._redactor, describe=describe,
        )
        return access_token_credential(config, self.name, await token_exchange(client, login, assertion=True))


EXAMPLE = """\
[providers.salesforce]
kind = "jwt_bearer"                        # RFC 7523 section 2.1
token_url = "https://login.salesforce.com/services/oauth2/token"
private_key = { env = "SALESFORCE_PRIVATE_KEY" }   # PEM; or { file = "/etc/tokend/salesforce.pem" }
issuer = "3MVG9-the-connected-apps-consumer-key"
subject = "integration@example.com"        # the user to act as
audience = "https://login.salesforce.com"
"""

KIND = Kind("jwt_bearer", JWTBearerConfig, "tokend.providers.jwt_bearer:JWTBearer", example=EXAMPLE)
