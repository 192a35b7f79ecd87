"""Google service account: a JSON key file's private key signs a JWT, exchanged for an access token
(or, with `target_audience`, an ID token) at the key's `token_uri`.

This is the JWT bearer grant of RFC 7523 as Google documents it for server-to-server OAuth: an RS256 JWT
with header `kid` = `private_key_id` and claims `iss` = `client_email`, `scope` (space-joined), `aud` =
`token_uri`, `iat`, `exp` (at most an hour after `iat`) and `sub` for domain-wide delegation, posted as
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`. The answer is
`{"access_token", "expires_in", "token_type"}`, or `{"id_token"}` when the claims name a
`target_audience` instead of a scope (Cloud Run, IAP); an ID token's expiry is its own `exp`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, field_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import SecretText, SecretValue
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase, Tokens
from tokend.providers.exchange import LoginRequest, limits, login_credential, malformed
from tokend.providers.expiry import jwt_expiry
from tokend.providers.oauth2 import JWT_BEARER_GRANT, access_token_credential, describe, token_exchange
from tokend.providers.signing_keys import describe_key, key_identity, login_key, masked
from tokend.redact import Redactor

if TYPE_CHECKING:
    from tokend.providers.signing_keys import SigningKey

__all__ = ["CLOUD_PLATFORM", "GoogleServiceAccount", "GoogleServiceAccountConfig", "ServiceAccountKey"]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Google refuses an assertion whose exp is more than an hour after its iat.
ASSERTION_LIFETIME = 3600
_UPSTREAM_URL: Any = UpstreamURL  # validated as any upstream URL is: https, or http to a loopback host


@dataclass(frozen=True)
class ServiceAccountKey:
    """The fields of a service account's JSON key file that a login needs (the key itself stays a secret)."""

    client_email: str
    private_key_id: str
    token_uri: str
    private_key: str = ""

    @classmethod
    def parse(cls, text: str) -> ServiceAccountKey:
        """The key file's fields, or ValueError naming what is missing (never quoting the file)."""
        from pydantic import TypeAdapter, ValidationError

        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("is not a service account JSON key file (it is not JSON)") from None
        if not isinstance(data, dict):
            raise ValueError("is not a service account JSON key file (not a JSON object)")
        if data.get("type", "service_account") != "service_account":
            raise ValueError(f"is a JSON key file of type {str(data.get('type'))[:40]!r}, not \"service_account\"")
        missing = [name for name in ("client_email", "private_key", "private_key_id", "token_uri")
                   if not isinstance(data.get(name), str) or not data[name]]
        if missing:
            raise ValueError(f"is a JSON key file without {', '.join(missing)}: download a new key from the "
                             "service account's Keys page")
        try:
            token_uri = TypeAdapter(_UPSTREAM_URL).validate_python(data["token_uri"])
        except ValidationError as exc:
            raise ValueError(f"has a token_uri that cannot be used: {exc.errors()[0]['msg']}") from None
        return cls(data["client_email"], data["private_key_id"], token_uri, data["private_key"])


class GoogleServiceAccountConfig(ProviderBase):
    kind: Literal["google_service_account"]
    key: SecretText  # the service account's JSON key file
    scopes: tuple[str, ...] = Field(default=(CLOUD_PLATFORM,), min_length=1)
    subject: str | None = None  # a user to impersonate (domain-wide delegation)
    target_audience: str | None = None  # serve an ID token for this audience instead of an access token

    @field_validator("key")
    @classmethod
    def _usable_key(cls, key: SecretValue) -> SecretValue:
        from tokend.providers.signing_keys import load_key

        parsed = ServiceAccountKey.parse(key.get())
        try:
            signer = load_key(parsed.private_key)
        except ValueError as exc:
            raise ValueError(f"holds a private_key that {exc}") from None
        if signer.type != "RSA":
            raise ValueError("holds a private_key that is not RSA; Google signs with RS256 only")
        return key

    @property
    def account(self) -> ServiceAccountKey:
        """The key file's client_email, private_key_id and token_uri, as it is now."""
        return ServiceAccountKey.parse(self.key.get())

    @property
    def client_email(self) -> str:
        return self.account.client_email

    @property
    def url(self) -> str:
        return self.account.token_uri

    def gce_problem(self) -> str | None:
        return None

    def _default_registry_username(self) -> str:
        return "oauth2accesstoken"  # Artifact Registry's and Container Registry's user name for an access token

    def key_descriptions(self) -> dict[str, str]:
        return {"key": describe_key(_key_secret(self.key), None) + f" (client_email {self.client_email}, "
                f"private_key_id {self.account.private_key_id})"}

    def login_secrets(self) -> dict[str, str]:
        account = self.account
        return {"key": f"{account.client_email} {account.private_key_id} {key_identity(_key_secret(self.key), None)}"}


def _key_secret(key: SecretValue) -> SecretValue:
    """The PEM inside the JSON key file, as a secret of its own."""
    from pydantic import SecretStr

    return SecretValue(SecretStr(ServiceAccountKey.parse(key.get()).private_key), key.source, key.path, True)


class GoogleServiceAccount:
    def __init__(self, name: str, config: GoogleServiceAccountConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        self._account: ServiceAccountKey | None = None
        self._signer: SigningKey | None = None

    @property
    def client_email(self) -> str:
        return self.config.client_email

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.config.scopes

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.mint(client, audience=self.config.target_audience)

    async def mint(
        self, client: httpx.AsyncClient, *, scopes: Sequence[str] | None = None, audience: str | None = None,
        tokens: Tokens | None = None,
    ) -> Credential:
        """A new token from this service account: an ID token for `audience` when given, else an access token
        for `scopes` (default: the configured ones). For callers that need other scopes or audiences than the
        provider serves (Google's metadata server answers both on demand); each call is one login. `tokens`:
        unused (the key is its own source), taken as every Google account's mint takes it."""
        if scopes is not None and audience is not None:
            raise ValueError("ask for scopes or for an audience, not both")
        account, signer = self._key()
        claims: dict[str, Any] = {"iss": account.client_email, "aud": account.token_uri}
        if audience is None and self.config.subject is not None:
            claims["sub"] = self.config.subject  # domain-wide delegation is for access tokens only
        if audience is not None:
            claims["target_audience"] = audience
        else:
            claims["scope"] = " ".join(scopes or self.config.scopes)
        from tokend.providers.signing_keys import assertion_claims

        assertion = masked(self._redactor, self.name, signer.sign(
            assertion_claims(ASSERTION_LIFETIME, **claims), alg="RS256", header={"kid": account.private_key_id}))
        login = LoginRequest(
            provider=self.name, method="POST", url=account.token_uri, headers={"Accept": "application/json"},
            form={"grant_type": JWT_BEARER_GRANT, "assertion": assertion}, **limits(self.config),
            redactor=self._redactor, describe=describe,
        )
        body = await token_exchange(client, login, assertion=True)
        if audience is None:
            return access_token_credential(self.config, self.name, body)
        return self._id_token(body)

    def _id_token(self, body: Any) -> Credential:
        token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no id_token")
        expires = jwt_expiry(token)
        if expires is None:
            raise malformed(self.name, "the id_token is not a JWT with an exp claim")
        return login_credential(self.config, token, expires,
                                headers={"Authorization": f"Bearer {token}"}, exact_expiry=True)

    def _key(self) -> tuple[ServiceAccountKey, SigningKey]:
        if self._account is None or self._signer is None:
            try:
                account = ServiceAccountKey.parse(self.config.key.get())
            except ValueError as exc:
                from tokend.errors import UpstreamError

                raise UpstreamError(self.name, f"key (from {self.config.key.source}) {exc}", retryable=False) from None
            self._signer = login_key(self.name, "key's private_key", _key_secret(self.config.key), None)
            self._account = account
        return self._account, self._signer


EXAMPLE = """\
[providers.gcp]
kind = "google_service_account"
key = { env = "GOOGLE_SERVICE_ACCOUNT_KEY" }   # the JSON key file; or { file = "/etc/tokend/gcp-key.json" }
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
# subject = "admin@example.com"            # a user to act as (domain-wide delegation)
# target_audience = "https://service.example.com"   # serve an ID token for it instead
"""

KIND = Kind("google_service_account", GoogleServiceAccountConfig,
            "tokend.providers.google_service_account:GoogleServiceAccount", example=EXAMPLE)
