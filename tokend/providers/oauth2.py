"""OAuth 2.0 client credentials (RFC 6749 section 4.4): a client id and secret for an access token.

The request is form-encoded, `grant_type=client_credentials`, with the client authenticated by HTTP
Basic (section 2.3.1, the default), by `client_id` and `client_secret` form fields, or by a JWT signed
with the client's private key (`private_key_jwt`, RFC 7523 section 2.2: Entra ID's certificate
credentials, Okta, Keycloak), or by a federated assertion the platform issued (`client_assertion`: Entra
ID's workload identity, read anew from its file at every login). Errors are the JSON of section 5.2:
`{"error": "invalid_client", "error_description": "..."}`. The token endpoint helpers below serve the
other kinds that post to one (google_service_account, jwt_bearer).
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret, SecretText, SecretValue, config_relative
from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers.base import Kind, ProviderBase, Tokens
from tokend.providers.exchange import (
    LoginRequest,
    exchange,
    limits,
    login_credential,
    malformed,
    number_or_none,
)
from tokend.providers.signing_keys import (
    checked_key,
    clock_skew_hint,
    describe_key,
    key_identity,
    login_key,
    masked,
    optional_secret,
)
from tokend.providers.subject_token import SubjectToken, read_subject_token, source_names
from tokend.redact import Redactor

if TYPE_CHECKING:
    from tokend.providers.signing_keys import SigningKey

# RFC 7523 section 2.2's client_assertion_type, and section 2.1's grant_type.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Entra ID takes a client assertion for 5 to 10 minutes; the shorter, the less a stolen one is worth.
CLIENT_ASSERTION_LIFETIME = 300

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


async def token_exchange(client: httpx.AsyncClient, login: LoginRequest, *, assertion: bool = False) -> Any:
    """POST to a token endpoint; its JSON answer, or UpstreamError. A section 5.2 code saying the client or
    its grant is wrong is a refused credential, whatever the status. `assertion`: the request carries a
    signed JWT, so a refusal of its times names the likely cause (this machine's clock)."""
    try:
        body, _ = await exchange(client, login)
    except UpstreamError as exc:
        message = clock_skew_hint(exc.message) if assertion else exc.message
        if isinstance(exc, CredentialsRejected) or (exc.status == 400 and any(code in exc.message
                                                                                for code in REJECTED)):
            raise CredentialsRejected(login.provider, message, status=exc.status or 400,
                                      request_id=exc.request_id) from None
        exc.message = message
        exc.args = (message,)
        raise
    return body


def access_token_credential(config: ProviderBase, name: str, body: Any) -> Credential:
    """The credential of a section 5.1 answer: `access_token`, `token_type`, `expires_in` (else
    default_lifetime, or the token's own JWT exp)."""
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise malformed(name, "no access_token")
    token_type = body.get("token_type") if isinstance(body.get("token_type"), str) else "Bearer"
    scheme = "Bearer" if token_type.lower() == "bearer" else token_type
    lifetime = number_or_none(body.get("expires_in"))
    return login_credential(
        config, token, None if lifetime is None else time.time() + lifetime,
        headers={"Authorization": f"{scheme} {token}"}, token_type=scheme, exact_expiry=True,
    )


class OAuth2ClientCredentialsConfig(ProviderBase):
    """RFC 6749 section 4.4: a client id and a secret (or a signing key) exchanged for an access token."""

    kind: Literal["oauth2_client_credentials"]
    token_url: UpstreamURL
    client_id: str = Field(min_length=1)
    client_secret: Secret | None = None  # every auth_method but private_key_jwt
    scope: str | list[str] | None = None
    audience: str | None = None
    # client_secret_basic is the RFC's default (section 2.3.1); some servers only take the form fields.
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt",
                         "client_assertion"] = "client_secret_basic"
    # client_assertion: a JWT the platform issues (Entra workload identity: { file = AZURE_FEDERATED_TOKEN_FILE's
    # path }), sent as is, read anew at every login.
    client_assertion: SubjectToken | None = None
    # private_key_jwt: the key that signs the client assertion (the passphrase first: the key's check reads it).
    client_assertion_key_passphrase: Secret | None = None
    client_assertion_key: SecretText | None = None
    client_assertion_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    client_assertion_kid: str | None = None
    client_certificate: Path | None = None  # PEM; the assertion's header then names it by x5t and x5t#S256
    extra: dict[str, str] = {}  # further form fields some servers want (resource, ...)

    @property
    def url(self) -> str:
        return self.token_url

    @field_validator("client_assertion_key")
    @classmethod
    def _usable_key(cls, key: SecretValue | None, info: ValidationInfo) -> SecretValue | None:
        return None if key is None else checked_key(key, info, "client_assertion_key_passphrase")

    @field_validator("client_certificate")
    @classmethod
    def _readable_certificate(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = config_relative(path)
        _read_certificate(path)
        return path

    def sources(self) -> tuple[str, ...]:
        return source_names(self.client_assertion)

    @model_validator(mode="after")
    def _authenticated_one_way(self) -> OAuth2ClientCredentialsConfig:
        if (self.auth_method == "client_assertion") != (self.client_assertion is not None):
            raise ValueError('auth_method = "client_assertion" and client_assertion go together: the assertion is '
                             'the federated token the platform issues, as { file = "/path/to/token" }')
        if self.auth_method == "client_assertion":
            extra = [name for name in ("client_secret", "client_assertion_key", "client_certificate")
                     if getattr(self, name) is not None]
            if extra:
                raise ValueError(f'auth_method = "client_assertion" sends the platform\'s token only: remove '
                                 f'{", ".join(extra)}')
            return self
        if self.auth_method != "private_key_jwt":
            signing = [name for name in ("client_assertion_key", "client_certificate", "client_assertion_kid")
                       if getattr(self, name) is not None]
            if signing:
                raise ValueError(f'{", ".join(signing)} need auth_method = "private_key_jwt"')
            if self.client_secret is None:
                raise ValueError(f"client_secret is required with auth_method = {self.auth_method!r} (or use "
                                 'auth_method = "private_key_jwt" with client_assertion_key)')
            return self
        if self.client_secret is not None:
            raise ValueError('auth_method = "private_key_jwt" sends no client secret: remove client_secret')
        if self.client_assertion_key is None:
            raise ValueError('auth_method = "private_key_jwt" needs client_assertion_key (the PEM private key)')
        from tokend.providers.signing_keys import load_key

        key = load_key(self.client_assertion_key.get(), optional_secret(self.client_assertion_key_passphrase))
        try:
            key.check_algorithm(self.client_assertion_alg)
        except ValueError as exc:
            raise ValueError(f"client_assertion_alg: {exc}") from None
        if self.client_certificate is not None:
            from tokend.providers.signing_keys import certificate_thumbprints

            try:
                certificate_thumbprints(_read_certificate(self.client_certificate), key)
            except ValueError as exc:
                raise ValueError(f"client_certificate {self.client_certificate} {exc}") from None
        return self

    def key_descriptions(self) -> dict[str, str]:
        if self.client_assertion_key is None:
            return {}
        return {"client_assertion_key": describe_key(self.client_assertion_key, self.client_assertion_key_passphrase)}

    def login_secrets(self) -> dict[str, str]:
        if self.client_assertion_key is None:
            return super().login_secrets()
        return {"client_assertion_key": key_identity(self.client_assertion_key, self.client_assertion_key_passphrase)}


def _read_certificate(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a PEM certificate (not text)") from None


class OAuth2ClientCredentials:
    def __init__(self, name: str, config: OAuth2ClientCredentialsConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        self._key: tuple[SigningKey, dict[str, str]] | None = None
        if config.auth_method == "client_secret_basic" and config.client_secret is not None:
            # An upstream echoing the request's Authorization header echoes the secret in this form.
            redactor.add_secrets([basic_authorization(config.client_id, config.client_secret.get()).split()[1]])

    def _request(self, assertion: str | None = None) -> LoginRequest:
        config = self.config
        form = {"grant_type": "client_credentials", **config.extra}
        if config.scope:
            form["scope"] = config.scope if isinstance(config.scope, str) else " ".join(config.scope)
        if config.audience:
            form["audience"] = config.audience
        headers = {"Accept": "application/json"}
        if assertion is not None:
            form |= {"client_id": config.client_id, "client_assertion_type": CLIENT_ASSERTION_TYPE,
                     "client_assertion": assertion}
        elif config.auth_method == "private_key_jwt":
            # Entra ID wants client_id beside the assertion even though the assertion names it.
            form |= {"client_id": config.client_id, "client_assertion_type": CLIENT_ASSERTION_TYPE,
                     "client_assertion": self._client_assertion()}
        elif config.auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(config.client_id, _secret(config))
        else:
            form |= {"client_id": config.client_id, "client_secret": _secret(config)}
        return LoginRequest(
            provider=self.name, method="POST", url=config.token_url, headers=headers, form=form,
            **limits(config), redactor=self._redactor, describe=describe,
        )

    def _client_assertion(self) -> str:
        """RFC 7523 section 3's claims, signed afresh for every login (a jti is used once)."""
        from tokend.providers.signing_keys import assertion_claims, certificate_thumbprints

        config = self.config
        assert config.client_assertion_key is not None  # the config's check: private_key_jwt has a key
        if self._key is None:
            key = login_key(self.name, "client_assertion_key", config.client_assertion_key,
                              config.client_assertion_key_passphrase)
            header = {"kid": config.client_assertion_kid} if config.client_assertion_kid else {}
            if config.client_certificate is not None:
                try:
                    header |= certificate_thumbprints(_read_certificate(config.client_certificate), key)
                except ValueError as exc:
                    # Retried soon: a key and its certificate replaced one after the other are a rotation
                    # under way, and the certificate file is read again at the next try.
                    raise UpstreamError(self.name, f"client_certificate {exc}") from None
            self._key = (key, header)
        key, header = self._key
        claims = assertion_claims(CLIENT_ASSERTION_LIFETIME, iss=config.client_id, sub=config.client_id,
                                  aud=config.token_url)
        claims["nbf"] = claims["iat"]
        return masked(self._redactor, self.name, key.sign(claims, alg=config.client_assertion_alg, header=header))

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        config = self.config
        assertion = None
        if config.client_assertion is not None:
            assertion = await read_subject_token(config.client_assertion, provider=self.name, field="client_assertion",
                                                 tokens=tokens, redactor=self._redactor)
        request = self._request(assertion)
        body = await token_exchange(client, request, assertion=config.auth_method == "private_key_jwt")
        return access_token_credential(config, self.name, body)


def _secret(config: OAuth2ClientCredentialsConfig) -> str:
    assert config.client_secret is not None  # the config's check: these auth methods have one
    return config.client_secret.get()


EXAMPLE = """\
[providers.billing]
kind = "oauth2_client_credentials"         # RFC 6749 section 4.4
token_url = "https://auth.example.com/oauth/token"
client_id = "my-client"
client_secret = { env = "BILLING_CLIENT_SECRET" }
# scope = ["invoices:read"]                # a list, or one space-separated string
# audience = "https://billing.example.com"
# auth_method = "client_secret_post"       # the default is client_secret_basic
# Entra workload identity (no secret): the federated token the platform writes, read at every login
# token_url = "https://login.microsoftonline.com/TENANT_ID/oauth2/v2.0/token"
# auth_method = "client_assertion"
# client_assertion = { file = "/var/run/secrets/azure/tokens/azure-identity-token" }
"""

KIND = Kind("oauth2_client_credentials", OAuth2ClientCredentialsConfig,
            "tokend.providers.oauth2:OAuth2ClientCredentials", example=EXAMPLE)
