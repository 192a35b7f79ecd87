"""The one place where a login's HTTP exchange becomes a result or an error, and the credential builders
the kinds share. Nothing above this module sees a raw httpx exception.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.expiry import resolve_expiry
from tokend.providers.base import ProviderBase
from tokend.redact import Redactor, excerpt

# What a provider reads from an error body: (its request id, its message), either may be None.
Describe = Callable[[Any], tuple[str | None, str | None]]


@dataclass(frozen=True)
class LoginRequest:
    """One login call: everything `exchange` needs to make it and to explain its failure."""

    provider: str
    method: str
    url: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout  # see http_timeout()
    redactor: Redactor
    describe: Describe
    json: Any = None  # a JSON body...
    form: Mapping[str, str] | None = None  # ...or a form-encoded one
    action: str = "login"  # what the call is, for its error messages ("list keys", ...)


def http_timeout(config: ProviderBase) -> httpx.Timeout:
    """A provider's per-step bounds for one call; the manager bounds the whole login by `timeout`."""
    return httpx.Timeout(
        config.timeout, connect=min(config.connect_timeout, config.timeout),
        read=min(config.read_timeout or config.timeout, config.timeout),
    )


async def exchange(client: httpx.AsyncClient, login: LoginRequest) -> tuple[Any, str | None]:
    """Make the login call; return (the decoded JSON body, the request id) of a 2xx answer."""
    try:
        response = await client.request(
            login.method, login.url, json=login.json, data=login.form, headers=dict(login.headers),
            timeout=login.timeout,
        )
    except httpx.ConnectTimeout:
        raise UpstreamError(
            login.provider, f"could not connect to {login.url} within {login.timeout.connect:g}s"
        ) from None
    except httpx.TimeoutException:
        raise UpstreamError(
            login.provider, f"{login.action} got no answer within {login.timeout.read:g}s"
        ) from None
    except httpx.HTTPError as exc:
        reason = login.redactor.scrub(str(exc)) or type(exc).__name__
        raise UpstreamError(login.provider, f"could not reach {login.url}: {reason}") from None
    body = _json_or_none(response)
    request_id, message = login.describe(body) if body is not None else (None, None)
    if not response.is_success:
        raise _http_error(login, response, message, request_id)
    if body is None:
        text = excerpt(response.text, login.redactor)
        raise UpstreamError(
            login.provider, f"{login.action} answered {response.status_code} but not with JSON: {text!r}",
            status=response.status_code,
        )
    return body, request_id


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _http_error(
    login: LoginRequest, response: httpx.Response, message: str | None, request_id: str | None
) -> UpstreamError:
    status = response.status_code
    detail = excerpt(message or response.text, login.redactor) or response.reason_phrase
    text = f"{login.action} answered {status}: {detail}"
    if request_id:
        text += f" (request id {request_id})"
    if status in (401, 403):
        return CredentialsRejected(login.provider, text, status=status, request_id=request_id)
    retryable = status in (408, 425, 429) or status >= 500
    return UpstreamError(
        login.provider, text, status=status, request_id=request_id, retryable=retryable,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def malformed(provider: str, what: str, request_id: str | None = None) -> UpstreamError:
    """The upstream said 2xx but the body lacks what its documentation promises: transient, retried."""
    suffix = f" (request id {request_id})" if request_id else ""
    return UpstreamError(provider, f"login answer is malformed: {what}{suffix}", request_id=request_id)


def bearer_credential(
    config: ProviderBase,
    token: str,
    reported_expiry: float | None,
    *,
    extra_headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> Credential:
    """A bearer token credential, with its expiry made sensible (tokend.expiry)."""
    headers = {**(extra_headers or {}), "Authorization": f"Bearer {token}"}
    return login_credential(config, token, reported_expiry, headers=headers, request_id=request_id)


def login_credential(
    config: ProviderBase,
    token: str,
    reported_expiry: float | None,
    *,
    headers: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    token_type: str = "Bearer",
    request_id: str | None = None,
) -> Credential:
    """The credential a login produced, with its expiry made sensible (tokend.expiry)."""
    now = time.time()
    expires_at, note = resolve_expiry(
        reported_expiry, token, now=now,
        default_lifetime=config.default_lifetime, max_lifetime=config.max_lifetime,
    )
    return Credential(
        token=token, token_type=token_type, expires_at=expires_at, headers=headers, query=query or {},
        request_id=request_id, obtained_at=now, expiry_note=note,
    )


def static_credential(
    key: str, *, token_type: str, header: str | None, scheme: str, query_param: str | None
) -> Credential:
    """A key that needs no login and never expires, served as a header and/or a query parameter."""
    return Credential(
        token=key,
        token_type=token_type,
        expires_at=None,
        headers={header: f"{scheme} {key}" if scheme else key} if header else {},
        query={query_param: key} if query_param else {},
        obtained_at=time.time(),
    )


def number_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
