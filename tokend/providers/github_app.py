"""GitHub App installation tokens: the app's private key signs a short JWT, exchanged for an installation
access token (an hour long) that can be narrowed to some repositories and permissions.

`POST {base_url}/app/installations/{installation_id}/access_tokens` with `Authorization: Bearer <jwt>`,
`Accept: application/vnd.github+json`, `X-GitHub-Api-Version` and a `User-Agent` (GitHub refuses requests
without one); the JWT is RS256 with `iat` 60 seconds in the past (GitHub's advice against clock drift),
`exp` at most ten minutes after now and `iss` the app's client ID (or its app ID). The answer is
`201 {"token", "expires_at" (ISO 8601), "permissions", ...}`; the token's length and format are GitHub's
to change, so nothing here assumes either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tokend._version import __version__
from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret, SecretText, SecretValue
from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import LoginRequest, bearer_credential, exchange, limits, malformed
from tokend.providers.expiry import iso_expiry
from tokend.providers.signing_keys import checked_key, clock_skew_hint, describe_key, key_identity, login_key, masked
from tokend.redact import Redactor

if TYPE_CHECKING:
    from tokend.providers.signing_keys import SigningKey

__all__ = ["GitHubApp", "GitHubAppConfig"]

API_VERSION = "2022-11-28"
# GitHub refuses an app JWT whose exp is more than ten minutes away; iat 60 s back absorbs clock drift.
JWT_ISSUED_BEFORE = 60
JWT_LIFETIME = 600


def describe(body: Any) -> tuple[str | None, str | None]:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return None, body["message"]
    return None, None


class GitHubAppConfig(ProviderBase):
    kind: Literal["github_app"]
    app_id: int | None = Field(default=None, gt=0)
    client_id: str | None = Field(default=None, min_length=1)  # GitHub's advice: the JWT's iss, over app_id
    installation_id: int = Field(gt=0)
    private_key_passphrase: Secret | None = None  # before the key: the key's check reads it
    private_key: SecretText
    repositories: tuple[str, ...] = ()  # narrow the token to these repositories (names, without the owner)
    repository_ids: tuple[int, ...] = ()
    permissions: dict[str, Literal["read", "write", "admin"]] = {}  # narrow it to these ({"contents": "read"})
    base_url: UpstreamURL = "https://api.github.com"  # GitHub Enterprise Server: https://HOST/api/v3

    @property
    def url(self) -> str:
        return f"{self.base_url}/app/installations/{self.installation_id}/access_tokens"

    @property
    def issuer(self) -> str:
        return self.client_id or str(self.app_id)

    def _default_api_url(self) -> str:
        return self.base_url

    def _default_git_username(self) -> str:
        return "x-access-token"  # GitHub's user name for an installation token, over git and ghcr.io alike

    def _default_registry_username(self) -> str:
        return "x-access-token"

    @field_validator("private_key")
    @classmethod
    def _usable_key(cls, key: SecretValue, info: ValidationInfo) -> SecretValue:
        from tokend.providers.signing_keys import load_key

        checked_key(key, info, "private_key_passphrase")
        passphrase = info.data.get("private_key_passphrase")
        if load_key(key.get(), passphrase.get() if isinstance(passphrase, SecretValue) else None).type != "RSA":
            raise ValueError("is not an RSA key; GitHub Apps sign with RS256 (generate a key on the app's page)")
        return key

    @model_validator(mode="after")
    def _named(self) -> GitHubAppConfig:
        if self.app_id is None and self.client_id is None:
            raise ValueError("client_id (or app_id) is required: the app's Client ID from its settings page")
        return self

    def key_descriptions(self) -> dict[str, str]:
        return {"private_key": describe_key(self.private_key, self.private_key_passphrase)}

    def login_secrets(self) -> dict[str, str]:
        return {"private_key": key_identity(self.private_key, self.private_key_passphrase)}


class GitHubApp:
    def __init__(self, name: str, config: GitHubAppConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        self._key: SigningKey | None = None

    def _jwt(self) -> str:
        from tokend.providers.signing_keys import assertion_claims

        if self._key is None:
            self._key = login_key(self.name, "private_key", self.config.private_key,
                                    self.config.private_key_passphrase)
        claims = assertion_claims(JWT_LIFETIME, issued_before=JWT_ISSUED_BEFORE, iss=self.config.issuer)
        return masked(self._redactor, self.name, self._key.sign(claims, alg="RS256"))

    def _request(self) -> LoginRequest:
        config = self.config
        body: dict[str, Any] = {}
        if config.repositories:
            body["repositories"] = list(config.repositories)
        if config.repository_ids:
            body["repository_ids"] = list(config.repository_ids)
        if config.permissions:
            body["permissions"] = dict(config.permissions)
        headers = {"Authorization": f"Bearer {self._jwt()}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": API_VERSION, "User-Agent": f"tokend/{__version__}"}
        return LoginRequest(
            provider=self.name, method="POST", url=config.url, headers=headers, json=body or None,
            **limits(config), redactor=self._redactor, describe=describe,
        )

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        try:
            body, request_id = await exchange(client, self._request())
        except UpstreamError as exc:
            raise self._explained(exc) from None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no token")
        return bearer_credential(self.config, token, iso_expiry(body.get("expires_at")), request_id=request_id)

    def _explained(self, exc: UpstreamError) -> UpstreamError:
        if exc.status == 404:
            # GitHub answers 404 for an installation this app does not have (never installed, or removed).
            message = (f"GitHub has no installation {self.config.installation_id} of app {self.config.issuer} "
                       f"(404): check installation_id, and that the app is still installed there ({exc.message})")
            return CredentialsRejected(self.name, message, status=404, request_id=exc.request_id)
        if isinstance(exc, CredentialsRejected):
            hinted = clock_skew_hint(exc.message)
            if hinted == exc.message:
                hinted += " (is private_key this app's key, and client_id / app_id this app's?)"
            return CredentialsRejected(self.name, hinted, status=exc.status or 401, request_id=exc.request_id)
        if exc.status == 422:  # a repository or permission the installation cannot grant: a person must fix it
            return UpstreamError(self.name, f"{exc.message} (check repositories and permissions)",
                                 status=422, request_id=exc.request_id, retryable=False)
        return exc


EXAMPLE = """\
[providers.github]
kind = "github_app"
client_id = "Iv23liEXAMPLE"                # the app's client ID (or app_id = 123456)
installation_id = 12345678
private_key = { env = "GITHUB_APP_PRIVATE_KEY" }   # the app's PEM key; or { file = "/etc/tokend/github-app.pem" }
# repositories = ["my-repo"]               # narrow the token to these repositories
# permissions = { contents = "read" }
# base_url = "https://github.example.com/api/v3"   # GitHub Enterprise Server
"""

KIND = Kind("github_app", GitHubAppConfig, "tokend.providers.github_app:GitHubApp", example=EXAMPLE)
