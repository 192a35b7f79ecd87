"""A user's refresh token exchanged for access tokens: RFC 6749 section 6, with rotation.

The refresh token a login spends is the one the last answer left (carried in the held Credential, which
the state folder and the fleet keep), else the configured `refresh_token`. An answer holding a new one
replaces it: servers that rotate (Auth0, Okta, ...) treat a second use of a spent one as theft and revoke
the whole family, so the old one is never sent again. `invalid_grant` means only the user can help: the
error says what to run (`tokend login NAME` where a device login is configured).

The same client authentication (section 2.3.1 Basic, form fields, or none for a public client) serves the
device authorization grant (RFC 8628) and revocation (RFC 7009), which live here too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, model_validator

from tokend.config.fields import UpstreamURL, is_loopback_host
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.errors import CredentialsRejected, SignInNeeded, UpstreamError
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import LoginRequest, exchange, limits, login_credential, malformed, number_or_none
from tokend.providers.oauth2 import basic_authorization, describe
from tokend.redact import Redactor

__all__ = ["DEVICE_GRANT", "DeviceAnswer", "DeviceStart", "OAuth2RefreshToken", "OAuth2RefreshTokenConfig"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_DEFAULT_INTERVAL = 5.0  # RFC 8628 section 3.2: when the server names none
# What a device authorization answer may ask for, whatever it says: a code lives between a minute and an
# hour (RFC 8628 suggests 1800 s at most); the daemon polls no faster than each second, no slower than each
# minute; a user code is what a person types (RFC 8628 section 6.1: short, printable).
_DEVICE_LIFETIME = (60.0, 3600.0)
_DEVICE_INTERVAL = (1.0, 60.0)
_MAX_USER_CODE = 64
_MAX_URI = 2048


class OAuth2RefreshTokenConfig(ProviderBase):
    """A user token: a refresh token (configured, or from a device login) renewed into access tokens."""

    SPENDS_REFRESH_TOKENS: ClassVar[bool] = True
    kind: Literal["oauth2_refresh_token"]
    token_url: UpstreamURL
    client_id: str = Field(min_length=1)
    client_secret: Secret | None = None
    # Default: client_secret_basic with a client_secret, none (a public client) without one.
    auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    scope: str | list[str] | None = None
    refresh_token: Secret | None = None  # the first one; absent when a device login will provide it
    device_authorization_url: UpstreamURL | None = None  # RFC 8628: enables `tokend login NAME`
    revocation_url: UpstreamURL | None = None  # RFC 7009: `tokend logout NAME` revokes there
    extra: dict[str, str] = {}  # further form fields some servers want on the refresh (resource, audience)

    @property
    def url(self) -> str:
        return self.token_url

    @property
    def client_auth(self) -> str:
        return self.auth_method or ("client_secret_basic" if self.client_secret is not None else "none")

    @property
    def scopes(self) -> str | None:
        return self.scope if isinstance(self.scope, str) or self.scope is None else " ".join(self.scope)

    @property
    def sign_in(self) -> str:
        """What the user runs when the refresh token is gone."""
        return ("tokend login {name}" if self.device_authorization_url else
                "put a new refresh_token in the config, then run `tokend reload`")

    @model_validator(mode="after")
    def _consistent(self) -> OAuth2RefreshTokenConfig:
        if self.client_auth != "none" and self.client_secret is None:
            raise ValueError(f"auth_method {self.client_auth} needs client_secret (or auth_method = \"none\" "
                             "for a public client)")
        if self.client_auth == "none" and self.client_secret is not None:
            raise ValueError('auth_method = "none" is for a public client: remove client_secret, or choose '
                             "client_secret_basic or client_secret_post")
        if self.refresh_token is None and self.device_authorization_url is None:
            raise ValueError("needs refresh_token, or device_authorization_url so that `tokend login` can "
                             "sign the user in")
        return self


@dataclass(frozen=True)
class DeviceStart:
    """RFC 8628 section 3.2: what the user is shown, and what the daemon polls with."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: float


@dataclass(frozen=True)
class DeviceAnswer:
    """One poll of the token endpoint: a credential, or the section 3.5 error code (authorization_pending,
    slow_down, expired_token, access_denied, ...) and its description."""

    credential: Credential | None = None
    error: str | None = None
    description: str = ""


class OAuth2RefreshToken:
    def __init__(self, name: str, config: OAuth2RefreshTokenConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor
        if config.client_auth == "client_secret_basic" and config.client_secret is not None:
            # An upstream echoing the request's Authorization header echoes the secret in this form.
            redactor.add_secrets([basic_authorization(config.client_id, config.client_secret.get()).split()[1]])

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_from(client, None)

    def spends(self, current: Credential | None) -> str | None:
        """The refresh token a login from `current` would send: the last answer's, else the configured one."""
        refresh = current.refresh_token if current is not None and current.refresh_token else None
        if refresh is None and self.config.refresh_token is not None:
            refresh = self.config.refresh_token.get()
        return refresh

    def spent(self, why: str) -> SignInNeeded:
        """The error for a refresh token that may already have been sent: it is not sent again."""
        return self._sign_in_needed(f"{self.name}'s refresh token may already have been spent ({why}), and a "
                                    "second use would make the server revoke the whole sign-in",
                                    reason="refresh_token_spent")

    async def fetch_from(self, client: httpx.AsyncClient, current: Credential | None) -> Credential:
        """Spend the held refresh token (the last answer's, else the configured one) for a new access token."""
        refresh = self.spends(current)
        if refresh is None:
            raise self._sign_in_needed(f"{self.name} holds no refresh token yet", reason="never_signed_in")
        form = {"grant_type": "refresh_token", "refresh_token": refresh, **self.config.extra}
        if self.config.scopes:
            form["scope"] = self.config.scopes
        codes: list[str] = []
        try:
            body, request_id = await exchange(client, self._request(self.config.token_url, form, codes))
        except UpstreamError as exc:
            if "invalid_grant" in codes:
                raise self._sign_in_needed(f"the authorization server refused {self.name}'s refresh token "
                                           f"({exc.message})", status=exc.status or 400) from None
            if exc.status == 400 and {"invalid_client", "unauthorized_client"} & set(codes):
                raise CredentialsRejected(self.name, exc.message, status=400) from None
            raise
        held = current.generation if current is not None and current.refresh_token == refresh else 0
        return self._credential(body, request_id, refresh, held + 1)

    # --- the device authorization grant (RFC 8628) and revocation (RFC 7009) ---------------------------------

    async def start_device(self, client: httpx.AsyncClient) -> DeviceStart:
        url = self.config.device_authorization_url
        if url is None:
            raise UpstreamError(self.name, f"{self.name} has no device_authorization_url", retryable=False)
        form = {"scope": self.config.scopes} if self.config.scopes else {}
        body, _ = await exchange(client, self._request(url, form, [], action="device authorization"))
        fields = body if isinstance(body, dict) else {}
        device_code, user_code, uri = (fields.get(key) for key in ("device_code", "user_code", "verification_uri"))
        if not all(isinstance(value, str) and value for value in (device_code, user_code, uri)):
            raise malformed(self.name, "the device authorization answer lacks device_code, user_code or "
                            "verification_uri")
        assert isinstance(device_code, str) and isinstance(user_code, str) and isinstance(uri, str)
        self._redactor.add_secrets([device_code])
        if len(user_code) > _MAX_USER_CODE or not user_code.isprintable():
            raise malformed(self.name, f"the device authorization answer's user_code is not {_MAX_USER_CODE} "
                            "printable characters or fewer")
        if not _shown_uri(uri):
            raise malformed(self.name, "the device authorization answer's verification_uri is not an https: "
                            "address (or http: on a loopback host)")
        complete = fields.get("verification_uri_complete")
        lifetime = _clamped(fields.get("expires_in"), 600.0, _DEVICE_LIFETIME)
        interval = _clamped(fields.get("interval"), _DEFAULT_INTERVAL, _DEVICE_INTERVAL)
        return DeviceStart(device_code, user_code, uri,
                           complete if isinstance(complete, str) and _shown_uri(complete) else None,
                           time.time() + lifetime, interval)

    async def poll_device(self, client: httpx.AsyncClient, device_code: str) -> DeviceAnswer:
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
        codes: list[str] = []
        try:
            body, request_id = await exchange(client, self._request(self.config.token_url, form, codes))
        except UpstreamError as exc:
            if codes and exc.status in (400, 401):
                return DeviceAnswer(error=codes[0], description=exc.message)
            raise
        return DeviceAnswer(credential=self._credential(body, request_id, None, 1))

    async def revoke(self, client: httpx.AsyncClient, refresh_token: str) -> None:
        """RFC 7009: the server answers 200 whether or not it knew the token; an error is an UpstreamError."""
        url = self.config.revocation_url
        if url is None:
            return
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        request = self._request(url, form, [], action="revocation")
        try:
            response = await client.post(url, data=dict(request.form or {}), headers=dict(request.headers),
                                         timeout=request.timeout)
        except httpx.HTTPError as exc:
            message = f"revocation could not reach the server ({type(exc).__name__})"
            raise UpstreamError(self.name, message) from None
        if not response.is_success:
            raise UpstreamError(self.name, f"revocation answered {response.status_code}", status=response.status_code)

    # --- shared -------------------------------------------------------------------------------------------

    def _request(self, url: str, form: dict[str, str], codes: list[str], *, action: str = "login") -> LoginRequest:
        config = self.config
        headers = {"Accept": "application/json"}
        form = dict(form)
        if config.client_auth == "client_secret_basic" and config.client_secret is not None:
            headers["Authorization"] = basic_authorization(config.client_id, config.client_secret.get())
        elif config.client_auth == "client_secret_post" and config.client_secret is not None:
            form |= {"client_id": config.client_id, "client_secret": config.client_secret.get()}
        else:
            form["client_id"] = config.client_id  # a public client names itself (section 3.2.1)

        def described(body: Any) -> tuple[str | None, str | None]:
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                codes.append(body["error"])
            return describe(body)

        return LoginRequest(provider=self.name, method="POST", url=url, headers=headers, form=form,
                            **limits(config), redactor=self._redactor, describe=described, action=action)

    def _credential(self, body: Any, request_id: str | None, spent: str | None, generation: int) -> Credential:
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no access_token", request_id)
        rotated = body.get("refresh_token")
        # No refresh_token in the answer: the server does not rotate, and the spent one stays valid.
        refresh = rotated if isinstance(rotated, str) and rotated else spent
        if refresh is None:
            raise malformed(self.name, "no refresh_token: a user token that cannot be renewed (does the scope "
                            "ask for offline_access?)", request_id)
        token_type = body.get("token_type") if isinstance(body.get("token_type"), str) else "Bearer"
        scheme = "Bearer" if token_type.lower() == "bearer" else token_type
        lifetime = number_or_none(body.get("expires_in"))
        credential = login_credential(
            self.config, token, None if lifetime is None else time.time() + lifetime,
            headers={"Authorization": f"{scheme} {token}"}, token_type=scheme, request_id=request_id,
            exact_expiry=True,
        )
        # A server that does not rotate leaves the line where it was: the same refresh token, the same generation.
        return dataclasses.replace(credential, refresh_token=refresh,
                                   generation=generation if refresh != spent else max(generation - 1, 0))

    def _sign_in_needed(self, why: str, *, status: int = 400, reason: str = "refresh_token_rejected") -> SignInNeeded:
        command = self.config.sign_in.format(name=self.name)
        run = f"run `{command}`" if command.startswith("tokend") else command
        return SignInNeeded(self.name, f"{why}: its user must sign in again: {run}", command=command,
                            status=status, reason=reason)


def _clamped(value: Any, default: float, bounds: tuple[float, float]) -> float:
    number = number_or_none(value)
    if number is None or not math.isfinite(number) or number <= 0:
        return default
    return min(max(number, bounds[0]), bounds[1])


def _shown_uri(uri: str) -> bool:
    """Whether an address from the server may be shown to a person to open: https:, or http: to this machine."""
    if len(uri) > _MAX_URI or not uri.isprintable():
        return False
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    host = parts.hostname or ""
    return bool(host) and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host)))


EXAMPLE = """\
[providers.me]
kind = "oauth2_refresh_token"
token_url = "https://auth.example.com/oauth/token"
client_id = "my-cli-app"
auth_method = "none"                       # a public client; or client_secret with client_secret_basic / _post
scope = "openid offline_access"
refresh_token = { env = "ME_REFRESH_TOKEN" }   # the first one; optional with device_authorization_url
# device_authorization_url = "https://auth.example.com/oauth/device/code"   # `tokend login me`
# revocation_url = "https://auth.example.com/oauth/revoke"                 # `tokend logout me` revokes it
"""

KIND = Kind("oauth2_refresh_token", OAuth2RefreshTokenConfig,
            "tokend.providers.oauth2_refresh_token.grant:OAuth2RefreshToken", example=EXAMPLE)
