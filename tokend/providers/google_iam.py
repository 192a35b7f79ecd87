"""Google's token services that the keyless kinds share: the Security Token Service's token exchange, and the
IAM Service Account Credentials API that mints a service account's tokens for a caller allowed to act as it.

    POST {sts_url}   form grant_type=urn:ietf:params:oauth:grant-type:token-exchange, audience, scope,
                     requested_token_type=...:access_token, subject_token, subject_token_type (no Authorization)
                     -> {"access_token", "issued_token_type", "token_type", "expires_in"}; errors are RFC 6749's
                     {"error": "invalid_grant", "error_description"}
    POST {iam_url}/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken   Bearer: the caller's token
                     {"scope": [...], "lifetime": "3600s", "delegates": [...]} -> {"accessToken", "expireTime"}
    POST {iam_url}/v1/projects/-/serviceAccounts/EMAIL:generateIdToken
                     {"audience", "includeEmail": true, "delegates": [...]} -> {"token"}
                     errors: {"error": {"code": 403, "message", "status": "PERMISSION_DENIED"}}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from pydantic import AfterValidator, Field

from tokend.credential import Credential
from tokend.errors import CredentialsRejected
from tokend.providers.base import ProviderBase
from tokend.providers.exchange import LoginRequest, exchange, limits, login_credential, malformed
from tokend.providers.expiry import jwt_expiry
from tokend.providers.oauth2 import access_token_credential, describe, token_exchange
from tokend.redact import Redactor

__all__ = ["IAM_URL", "STS_URL", "Delegate", "Lifetime", "ServiceAccountEmail",
           "generate_access_token", "generate_id_token", "sts_exchange"]

STS_URL = "https://sts.googleapis.com/v1/token"
IAM_URL = "https://iamcredentials.googleapis.com"
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def _email(value: str) -> str:
    if not re.fullmatch(r"[^@\s/:]+@[^@\s/:]+", value):
        raise ValueError(f"{value[:80]!r} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)")
    return value


def _delegate(value: str) -> str:
    if not re.fullmatch(r"projects/-/serviceAccounts/[^@\s/:]+@[^@\s/:]+", value):
        raise ValueError(f"{value[:80]!r} is not a delegate as the IAM API takes it: "
                         '"projects/-/serviceAccounts/EMAIL"')
    return value


ServiceAccountEmail = Annotated[str, AfterValidator(_email)]
Delegate = Annotated[str, AfterValidator(_delegate)]
# Seconds: at most an hour unless the organisation's policy allows 12 (constraints/iam.allowServiceAccount...).
Lifetime = Annotated[int, Field(ge=1, le=43200)]


def describe_google(body: Any) -> tuple[str | None, str | None]:
    """A Google API error's status and message (`{"error": {"code", "message", "status"}}`)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message") if isinstance(error.get("message"), str) else None
    status = error.get("status") if isinstance(error.get("status"), str) else None
    return None, " ".join(part for part in (status, message) if part) or None


async def sts_exchange(
    client: httpx.AsyncClient, config: ProviderBase, *, provider: str, redactor: Redactor, sts_url: str,
    audience: str, subject_token: str, subject_token_type: str, scopes: Sequence[str],
) -> Credential:
    """Step one: the subject token exchanged at Google's STS for a federated access token."""
    form = {"grant_type": _TOKEN_EXCHANGE, "audience": audience, "scope": " ".join(scopes),
            "requested_token_type": _ACCESS_TOKEN_TYPE, "subject_token": subject_token,
            "subject_token_type": subject_token_type}
    login = LoginRequest(provider=provider, method="POST", url=sts_url, headers={"Accept": "application/json"},
                         form=form, **limits(config), redactor=redactor, describe=describe, action="STS exchange")
    try:
        body = await token_exchange(client, login)
    except CredentialsRejected as exc:
        raise _hinted(exc, "check that the workload identity pool provider's issuer, allowed audiences and attribute "
                      "condition accept this subject token, and that it is current") from None
    return access_token_credential(config, provider, body)


async def generate_access_token(
    client: httpx.AsyncClient, config: ProviderBase, *, provider: str, redactor: Redactor, iam_url: str,
    bearer: str, email: str, scopes: Sequence[str], delegates: Sequence[str], lifetime: int,
) -> Credential:
    """An access token of service account `email`, asked for with the caller's token `bearer`."""
    body = await _iam(client, config, provider=provider, redactor=redactor, url=_method(iam_url, email,
                      "generateAccessToken"), bearer=bearer, email=email, json={
        "scope": list(scopes), "lifetime": f"{lifetime}s", "delegates": list(delegates)})
    token, expire = body.get("accessToken"), body.get("expireTime")
    if not isinstance(token, str) or not token:
        raise malformed(provider, "no accessToken")
    expires = _timestamp(expire)
    return login_credential(config, token, expires, headers={"Authorization": f"Bearer {token}"},
                            exact_expiry=expires is not None)


async def generate_id_token(
    client: httpx.AsyncClient, config: ProviderBase, *, provider: str, redactor: Redactor, iam_url: str,
    bearer: str, email: str, audience: str, delegates: Sequence[str],
) -> Credential:
    """An ID token of service account `email` for `audience` (its expiry is the JWT's own exp)."""
    body = await _iam(client, config, provider=provider, redactor=redactor, url=_method(iam_url, email,
                      "generateIdToken"), bearer=bearer, email=email, json={
        "audience": audience, "includeEmail": True, "delegates": list(delegates)})
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise malformed(provider, "no token")
    expires = jwt_expiry(token)
    if expires is None:
        raise malformed(provider, "the token is not a JWT with an exp claim")
    return login_credential(config, token, expires, headers={"Authorization": f"Bearer {token}"}, exact_expiry=True)


def _method(iam_url: str, email: str, method: str) -> str:
    return f"{iam_url}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}:{method}"


async def _iam(
    client: httpx.AsyncClient, config: ProviderBase, *, provider: str, redactor: Redactor, url: str, bearer: str,
    email: str, json: dict[str, Any],
) -> dict[str, Any]:
    login = LoginRequest(provider=provider, method="POST", url=url, json=json, action=f"impersonating {email}",
                         headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
                         **limits(config), redactor=redactor, describe=describe_google)
    try:
        body, _ = await exchange(client, login)
    except CredentialsRejected as exc:
        hint = (f"check that the caller has roles/iam.serviceAccountTokenCreator on {email} (on each delegate "
                "too), and that the IAM Service Account Credentials API is enabled in its project")
        raise _hinted(exc, hint) from None
    if not isinstance(body, dict):
        raise malformed(provider, "not a JSON object")
    return body


def _hinted(exc: CredentialsRejected, hint: str) -> CredentialsRejected:
    return CredentialsRejected(exc.provider, f"{exc.message}; {hint}", status=exc.status or 400,
                               request_id=exc.request_id)


def _timestamp(value: Any) -> float | None:
    """An RFC 3339 timestamp (`2024-01-01T00:00:00Z`, with or without fractions) as Unix seconds."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
