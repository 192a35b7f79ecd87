"""OAuth 2.0 Token Exchange (RFC 8693): a subject token (the identity a platform gives a workload) for an
access token of the authorization server's.

The request is form-encoded, `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, with
`subject_token` and `subject_token_type`, optionally `actor_token` / `actor_token_type`, `audience` and
`resource` (each may repeat, section 2.1), `scope` and `requested_token_type` (sent only when set). The client
authenticates as a client credentials client does, or not at all (`auth_method = "none"`: many servers take
the subject token as the only proof). The answer (section 2.2.1) is `access_token`, `issued_token_type`,
`token_type` and `expires_in`; errors are section 5.2's JSON, as for any token endpoint.
"""

from __future__ import annotations

from typing import Literal

import httpx
from pydantic import Field, model_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase, Tokens
from tokend.providers.exchange import LoginRequest, limits
from tokend.providers.oauth2 import (
    CLIENT_ASSERTION_TYPE,
    access_token_credential,
    basic_authorization,
    describe,
    token_exchange,
)
from tokend.providers.subject_token import SubjectSource, SubjectToken, read_subject_token, source_names
from tokend.redact import Redactor

__all__ = ["JWT_TOKEN_TYPE", "TOKEN_EXCHANGE_GRANT", "OAuth2TokenExchange", "OAuth2TokenExchangeConfig"]

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class OAuth2TokenExchangeConfig(ProviderBase):
    kind: Literal["oauth2_token_exchange"]
    token_url: UpstreamURL
    subject_token: SubjectToken
    subject_token_type: str = Field(default=JWT_TOKEN_TYPE, min_length=1)
    actor_token: SubjectToken | None = None
    actor_token_type: str | None = Field(default=None, min_length=1)
    audience: str | list[str] | None = None
    resource: str | list[str] | None = None
    scope: str | list[str] | None = None
    requested_token_type: str | None = Field(default=None, min_length=1)
    auth_method: Literal["none", "client_secret_basic", "client_secret_post", "client_assertion"] = "none"
    client_id: str | None = Field(default=None, min_length=1)
    client_secret: Secret | None = None
    client_assertion: SubjectToken | None = None
    extra: dict[str, str] = {}  # further form fields some servers want

    @property
    def url(self) -> str:
        return self.token_url

    def sources(self) -> tuple[str, ...]:
        return source_names(self.subject_token, self.actor_token, self.client_assertion)

    @model_validator(mode="after")
    def _consistent(self) -> OAuth2TokenExchangeConfig:
        if (self.actor_token is None) != (self.actor_token_type is None):
            raise ValueError("actor_token and actor_token_type go together (RFC 8693 section 2.1)")
        wanted = {"none": (), "client_secret_basic": ("client_id", "client_secret"),
                  "client_secret_post": ("client_id", "client_secret"),
                  "client_assertion": ("client_id", "client_assertion")}[self.auth_method]
        missing = [name for name in wanted if getattr(self, name) is None]
        if missing:
            raise ValueError(f"auth_method = {self.auth_method!r} needs {' and '.join(missing)}")
        unused = [name for name in ("client_secret", "client_assertion")
                  if name not in wanted and getattr(self, name) is not None]
        if unused:
            raise ValueError(f"auth_method = {self.auth_method!r} does not send {' or '.join(unused)}: remove it, "
                             "or choose the auth_method that sends it")
        return self


def _listed(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


class OAuth2TokenExchange:
    def __init__(self, name: str, config: OAuth2TokenExchangeConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        if config.auth_method == "client_secret_basic" and config.client_id and config.client_secret:
            redactor.add_secrets([basic_authorization(config.client_id, config.client_secret.get()).split()[1]])

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        config = self.config
        form: list[tuple[str, str]] = [("grant_type", TOKEN_EXCHANGE_GRANT), *config.extra.items()]
        form += [("subject_token", await self._read(config.subject_token, "subject_token", tokens)),
                 ("subject_token_type", config.subject_token_type)]
        if config.actor_token is not None and config.actor_token_type is not None:
            form += [("actor_token", await self._read(config.actor_token, "actor_token", tokens)),
                     ("actor_token_type", config.actor_token_type)]
        form += [("audience", value) for value in _listed(config.audience)]
        form += [("resource", value) for value in _listed(config.resource)]
        if config.scope:
            form.append(("scope", " ".join(_listed(config.scope))))
        if config.requested_token_type:
            form.append(("requested_token_type", config.requested_token_type))
        headers = {"Accept": "application/json"}
        form += await self._client_authentication(headers, tokens)
        login = LoginRequest(provider=self.name, method="POST", url=config.token_url, headers=headers,
                             form=_grouped(form), **limits(config), redactor=self._redactor, describe=describe)
        body = await token_exchange(client, login)
        return access_token_credential(config, self.name, body)

    async def _client_authentication(self, headers: dict[str, str], tokens: Tokens | None) -> list[tuple[str, str]]:
        config = self.config
        if config.auth_method == "client_secret_basic":
            assert config.client_id is not None and config.client_secret is not None  # the config's check
            headers["Authorization"] = basic_authorization(config.client_id, config.client_secret.get())
            return []
        if config.auth_method == "client_secret_post":
            assert config.client_id is not None and config.client_secret is not None
            return [("client_id", config.client_id), ("client_secret", config.client_secret.get())]
        if config.auth_method == "client_assertion":
            assert config.client_id is not None and config.client_assertion is not None
            assertion = await self._read(config.client_assertion, "client_assertion", tokens)
            return [("client_id", config.client_id), ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", assertion)]
        return [("client_id", config.client_id)] if config.client_id else []

    async def _read(self, setting: SubjectSource, field: str, tokens: Tokens | None) -> str:
        return await read_subject_token(setting, provider=self.name, field=field, tokens=tokens,
                                        redactor=self._redactor)


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """The form as LoginRequest takes it: a field given more than once (RFC 8693's audience and resource) as a
    list, which is sent as one field per item."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in grouped.items()}


EXAMPLE = """\
[providers.exchanged]
kind = "oauth2_token_exchange"             # RFC 8693
token_url = "https://sts.example.com/oauth2/token"
subject_token = { file = "/var/run/secrets/tokens/sts-token" }   # read anew at every exchange
# subject_token = { provider = "github-oidc" }   # or another provider's current token
# subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
audience = "https://api.example.com"
# scope = ["read"]
# requested_token_type = "urn:ietf:params:oauth:token-type:access_token"
# auth_method = "client_secret_basic"      # the default is none: the subject token is the only proof
# client_id = "my-client"
# client_secret = { env = "EXCHANGED_CLIENT_SECRET" }
"""

KIND = Kind("oauth2_token_exchange", OAuth2TokenExchangeConfig,
            "tokend.providers.oauth2_token_exchange:OAuth2TokenExchange", example=EXAMPLE)
