"""OAuth 2.0 client credentials (RFC 6749 section 4.4): a client id and secret for an access token.

The request is form-encoded, `grant_type=client_credentials`, with the client authenticated by HTTP
Basic (section 2.3.1, the default) or by `client_id` and `client_secret` form fields. Errors are the
JSON of section 5.2: `{"error": "invalid_client", "error_description": "..."}`.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.fields import UpstreamURL
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import (
    LoginRequest,
    exchange,
    limits,
    login_credential,
    malformed,
    number_or_none,
)
from tokend.redact import Redactor
from tokend.secrets import Secret

# Section 5.2 codes that mean the client's credentials (not the request) are wrong; sent with 400 or 401.
REJECTED = {"invalid_client", "unauthorized_client", "invalid_grant"}


def describe(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None, None
    description = body.get("error_description")
    return None, body["error"] + (f": {description}" if isinstance(description, str) else "")


def basic_authorization(client_id: str, client_secret: str) -> str:
    # Section 2.3.1: each part is form-urlencoded before the pair is base64-encoded.
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()



class OAuth2ClientCredentialsConfig(ProviderBase):
    """RFC 6749 section 4.4: a client id and secret exchanged for an access token."""

    kind: Literal["oauth2_client_credentials"]
    token_url: UpstreamURL
    client_id: str = Field(min_length=1)
    client_secret: Secret
    scope: str | list[str] | None = None
    audience: str | None = None
    # client_secret_basic is the RFC's default (section 2.3.1); some servers only take the form fields.
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    extra: dict[str, str] = {}  # further form fields some servers want (resource, ...)

    @property
    def url(self) -> str:
        return self.token_url


class OAuth2ClientCredentials:
    def __init__(self, name: str, config: OAuth2ClientCredentialsConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        if config.auth_method == "client_secret_basic":
            # An upstream echoing the request's Authorization header echoes the secret in this form.
            redactor.add_secrets([basic_authorization(config.client_id, config.client_secret.get()).split()[1]])

    def _request(self) -> LoginRequest:
        config = self.config
        form = {"grant_type": "client_credentials", **config.extra}
        if config.scope:
            form["scope"] = config.scope if isinstance(config.scope, str) else " ".join(config.scope)
        if config.audience:
            form["audience"] = config.audience
        headers = {"Accept": "application/json"}
        if config.auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(config.client_id, config.client_secret.get())
        else:
            form |= {"client_id": config.client_id, "client_secret": config.client_secret.get()}
        return LoginRequest(
            provider=self.name, method="POST", url=config.token_url, headers=headers, form=form,
            **limits(config), redactor=self._redactor, describe=describe,
        )

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        try:
            body, _ = await exchange(client, self._request())
        except UpstreamError as exc:
            if exc.status == 400 and any(f"{code}" in exc.message for code in REJECTED):
                raise CredentialsRejected(self.name, exc.message, status=400) from None
            raise
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no access_token")
        token_type = body.get("token_type") if isinstance(body.get("token_type"), str) else "Bearer"
        scheme = "Bearer" if token_type.lower() == "bearer" else token_type
        lifetime = number_or_none(body.get("expires_in"))
        return login_credential(
            self.config, token, None if lifetime is None else time.time() + lifetime,
            headers={"Authorization": f"{scheme} {token}"}, token_type=scheme, exact_expiry=True,
        )


EXAMPLE = """\
[providers.billing]
kind = "oauth2_client_credentials"         # RFC 6749 section 4.4
token_url = "https://auth.example.com/oauth/token"
client_id = "my-client"
client_secret = { env = "BILLING_CLIENT_SECRET" }
# scope = ["invoices:read"]                # a list, or one space-separated string
# audience = "https://billing.example.com"
# auth_method = "client_secret_post"       # the default is client_secret_basic
"""

KIND = Kind("oauth2_client_credentials", OAuth2ClientCredentialsConfig, OAuth2ClientCredentials, example=EXAMPLE)
