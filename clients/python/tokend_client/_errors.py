"""The exceptions of tokend_client, one per error code of tokend's local API.

    TokendError                 code: the API's error code, provider: the provider asked for (or None)
    ├── DaemonUnreachable         "daemon_unreachable": no answer from tokend (not running, wrong address)
    ├── UnknownProvider           "unknown_provider": 404, no provider of that name is configured
    ├── TokenUnavailable          "token_unavailable": 503, no valid token now; next_attempt (Unix time)
    ├── RefreshThrottled          "refresh_throttled": 429, a forced refresh came too soon; retry_after
    ├── RefreshFailed             "refresh_failed": 502, the forced login failed; upstream_status, request_id
    ├── Unauthorized              "unauthorized": 401, the client key is missing or unknown
    └── Forbidden                 "forbidden": 403, the request checks or the client key's provider list

Every message is a sentence for a person. It never holds a token nor the client key: the daemon scrubs
what it says, and this package puts neither into any text it writes.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "DaemonUnreachable",
    "Forbidden",
    "RefreshFailed",
    "RefreshThrottled",
    "TokenUnavailable",
    "TokendError",
    "Unauthorized",
    "UnknownProvider",
]


class TokendError(Exception):
    """Base of every error this package raises on purpose.

    >>> try:
    ...     client.credential("felloh")
    ... except TokendError as exc:
    ...     print(exc.code, exc.message)
    """

    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, provider: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        if code is not None:  # an error code this version does not know: kept as the daemon said it
            self.code = code  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, provider={self.provider!r}, message={self.message!r})"


class DaemonUnreachable(TokendError):
    """tokend could not be reached or gave no usable answer: not running, wrong address, timeout."""

    code = "daemon_unreachable"


class UnknownProvider(TokendError):
    """No provider of that name is configured in tokend (HTTP 404)."""

    code = "unknown_provider"


class TokenUnavailable(TokendError):
    """tokend holds no valid token for the provider now (HTTP 503).

    `next_attempt` is when tokend tries to log in again (Unix seconds), when it said so.
    """

    code = "token_unavailable"

    def __init__(self, message: str, *, provider: str | None = None, next_attempt: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.next_attempt = next_attempt


class RefreshThrottled(TokendError):
    """A forced refresh came too soon after the last login (HTTP 429); try again after `retry_after` seconds."""

    code = "refresh_throttled"

    def __init__(self, message: str, *, provider: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class RefreshFailed(TokendError):
    """The forced login failed upstream (HTTP 502): `upstream_status` and `request_id` say how, when known."""

    code = "refresh_failed"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        upstream_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.upstream_status = upstream_status
        self.request_id = request_id


class Unauthorized(TokendError):
    """tokend wants a client key, or does not know the one sent (HTTP 401)."""

    code = "unauthorized"


class Forbidden(TokendError):
    """tokend refused the request (HTTP 403): the client key may not read that provider, or a request check."""

    code = "forbidden"


def error_from_answer(status: int, body: Any, retry_after_header: str | None, provider: str) -> TokendError:
    """The exception for one of tokend's error answers; `body` is its parsed JSON (or None)."""
    data = body if isinstance(body, dict) else {}
    code = data.get("error") if isinstance(data.get("error"), str) else None
    message = data.get("message")
    if not isinstance(message, str):
        message = f"tokend answered HTTP {status}"
    named = data.get("provider")
    provider = named if isinstance(named, str) else provider
    code = code or _CODES_BY_STATUS.get(status)
    if code == "token_unavailable":
        return TokenUnavailable(message, provider=provider, next_attempt=_timestamp(data.get("next_attempt")))
    if code == "refresh_throttled":
        retry_after = _number(retry_after_header) or _number(data.get("retry_after"))
        return RefreshThrottled(message, provider=provider, retry_after=retry_after)
    if code == "refresh_failed":
        upstream = data.get("upstream_status")
        request_id = data.get("request_id")
        return RefreshFailed(message, provider=provider,
                             upstream_status=upstream if isinstance(upstream, int) else None,
                             request_id=request_id if isinstance(request_id, str) else None)
    kind = _SIMPLE.get(code or "")
    if kind is not None:
        return kind(message, provider=provider)
    return TokendError(message, provider=provider, code=code)


_SIMPLE: dict[str, type[TokendError]] = {
    "unknown_provider": UnknownProvider,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
}
# For an answer without a JSON body (a proxy in between, say), the code its status stands for.
_CODES_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "unknown_provider", 429: "refresh_throttled",
                    502: "refresh_failed", 503: "token_unavailable"}


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None  # an HTTP date: tokend sends seconds, and a date is no use for a short wait
    return None


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
