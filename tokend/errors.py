"""The one exception tree of tokend.

    TokendError
    ├── ConfigError             the config file (or a secret it names) is unusable: provider, field
    ├── UpstreamError           a login to a provider failed: provider, status, request_id, retryable
    │   └── CredentialsRejected   the provider refused the credentials (401/403): retried slowly
    │       └── SignInNeeded          a user token needs its user: no refresh token, or one refused
    │   └── FleetUnavailable    the fleet's Redis cannot be reached and this daemon may not spend alone
    ├── UnknownProvider         a client asked for a provider that is not configured
    ├── TokenUnavailable        no valid token can be served now: last error, next attempt, code
    ├── RefreshThrottled        a forced refresh was not attempted: why, and when one may be
    ├── OperationRefused        an admin operation (a Felloh key change) was refused before going upstream
    └── DaemonUnavailable       (client side) the daemon could not be reached or answered an error

Messages are sentences for a person and never hold a secret: whoever raises one of these has already
scrubbed what came from upstream (see tokend.redact).
"""

from __future__ import annotations


class TokendError(Exception):
    """Base of every error tokend raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TokendError):
    """The configuration cannot be used. `problems` holds one sentence per finding."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class UpstreamError(TokendError):
    """A login to the provider failed.

    `retryable` is True for what may pass by itself (timeouts, refused connections, 429, 5xx, a garbled
    answer) and False for what needs a person (bad credentials, a request the provider calls invalid).
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.request_id = request_id
        self.retryable = retryable
        self.retry_after = retry_after


class CredentialsRejected(UpstreamError):
    """The provider answered 401 or 403 to the login: the configured credentials are wrong or revoked."""

    def __init__(self, provider: str, message: str, *, status: int, request_id: str | None = None) -> None:
        super().__init__(provider, message, status=status, request_id=request_id, retryable=False)


class SignInNeeded(CredentialsRejected):
    """A user token cannot be renewed without its user: there is no refresh token, or the authorization
    server refused it (invalid_grant), or the user signed out, or the only one held may already have been
    spent. `command` is what the user should run; `reason` says why, as /status shows it:
    never_signed_in, refresh_token_rejected, refresh_token_spent, signed_out."""

    def __init__(self, provider: str, message: str, *, command: str, status: int = 400,
                 request_id: str | None = None, reason: str = "refresh_token_rejected") -> None:
        super().__init__(provider, message, status=status, request_id=request_id)
        self.command = command
        self.reason = reason


class FleetUnavailable(UpstreamError):
    """Fleet mode: a user token's refresh token is held by every daemon of the fleet, and while the fleet's
    Redis cannot be reached only the daemon that rotated it last may spend it. This daemon is not that one:
    it serves the access token it holds until it expires, then answers 503 `fleet_unavailable`."""

    def __init__(self, provider: str, message: str, *, retry_after: float) -> None:
        super().__init__(provider, message, retryable=True, retry_after=retry_after)


class UnknownProvider(TokendError):
    def __init__(self, provider: str, message: str | None = None) -> None:
        super().__init__(message or f"No provider named {provider!r} is configured.")
        self.provider = provider


class TokenUnavailable(TokendError):
    """No valid token to hand out: the first login has not succeeded yet, or the last token expired."""

    def __init__(self, provider: str, message: str, *, next_attempt: float | None = None,
                 code: str = "token_unavailable", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.next_attempt = next_attempt
        self.code = code  # the API's error code: token_unavailable, or fleet_unavailable
        self.retry_after = retry_after  # seconds, for a Retry-After header


class RefreshThrottled(TokendError):
    """A forced refresh made no login, and would only hand back the token the client found rejected:
    the provider asked for quiet (Retry-After), refused the credentials, or keeps rejecting new tokens."""

    def __init__(self, provider: str, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.provider = provider
        self.retry_after = retry_after


class OperationRefused(TokendError):
    """An admin operation was refused before reaching the provider; `status` is the HTTP answer's."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class DaemonUnavailable(TokendError):
    """The client commands could not get an answer from the daemon."""
