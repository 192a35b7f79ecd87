"""A credential as served, and the states a provider's credential can be in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

# A token this close to its expiry would die on its way upstream: it is not served.
SERVE_MARGIN = 1.0


class State(enum.Enum):
    """What /status shows for a provider. Derived from facts (see Manager), never stored."""

    PENDING = "pending"  # the first login has not finished
    OK = "ok"  # a valid token, and the last login succeeded
    REFRESHING = "refreshing"  # a valid token, and a login is in flight
    RETRYING = "retrying"  # a valid token, but the last login failed; another is scheduled
    EXPIRED = "expired"  # the token has expired and no new one could be had yet
    FAILED = "failed"  # no token was ever obtained: every login so far failed
    # No token until its user signs in (`tokend login`): they never did, or signed out. A wait, not a failure:
    # no login was refused, and the daemon is ready meanwhile.
    SIGN_IN = "sign_in"


@dataclass(frozen=True)
class AwsKeys:
    """The key pair of temporary AWS credentials (its session token is the credential's token)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    account_id: str | None = None  # from the assumed role's ARN, which the container endpoint may answer


# eq=False: credentials are compared by identity, which is how the API knows that the bytes it rendered
# are still those of the provider's current credential.
@dataclass(frozen=True, eq=False)
class Credential:
    """A token and what a client must add to its upstream request. Replaced whole on every refresh."""

    token: str = field(repr=False)
    token_type: str
    expires_at: float | None  # Unix seconds; None for keys that never expire
    headers: Mapping[str, str] = field(repr=False)
    query: Mapping[str, str] = field(repr=False, default_factory=dict)
    request_id: str | None = None  # the upstream's id for the login that issued it
    obtained_at: float = 0.0
    expiry_note: str | None = None  # set when the upstream's expiry made no sense and was corrected
    # "login": this daemon logged in; "fleet": adopted from another daemon of the fleet; "static": a key that
    # needs no login (served as configured); "state": read back from the state folder after a restart
    source: str = "login"
    renew_at: float | None = None  # fleet mode: when the fleet renews it (Unix time), the same on every daemon
    # A user token's refresh token as the last answer left it: the next login spends it. Never served.
    refresh_token: str | None = field(default=None, repr=False)
    # A user token's place in its line of rotations: one more with each new refresh token, never less. A
    # record of a lower generation than one held or seen spent is an old one put back, never used.
    generation: int = 0
    # An AWS credential is three values: the key pair here, its session token in `token` (token_type "aws").
    aws: AwsKeys | None = field(default=None, repr=False)
    # The registry host the token is for, where the login's answer names it (ECR's proxyEndpoint): the
    # Docker helper's registry when the config lists none.
    registry: str | None = None

    @property
    def held_secrets(self) -> list[str]:
        """Every secret value this credential holds, for the redactor."""
        return [self.token, self.refresh_token or "", self.aws.secret_access_key if self.aws else ""]

    def expires_in(self, now: float) -> float | None:
        return None if self.expires_at is None else self.expires_at - now

    def is_fresh(self, now: float) -> bool:
        """True while the token may still be handed to a client."""
        return self.expires_at is None or self.expires_at - now > SERVE_MARGIN


# A token is sent in a header: longer than this, no server would take it anyway.
MAX_TOKEN_LENGTH = 16 * 1024


def unservable(credential: Credential) -> str | None:
    """Why a client could not send this credential upstream (a header holding CR, LF or NUL is a header
    injection in the client; a lone surrogate cannot even be encoded), or None when it can be served."""
    if not credential.token:
        return "the token is empty"
    if len(credential.token) > MAX_TOKEN_LENGTH:
        return f"the token is longer than {MAX_TOKEN_LENGTH} characters"
    values = [("the token", credential.token), *(("a header", f"{k}{v}") for k, v in credential.headers.items()),
              *(("a query parameter", f"{k}{v}") for k, v in credential.query.items())]
    for what, value in values:
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            return f"{what} holds a control character (CR, LF, NUL, ...)"
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{what} holds a character that cannot be encoded (a lone surrogate)"
    return None


def iso_utc(timestamp: float | None) -> str | None:
    """A Unix time as the API shows it: `2026-11-22T10:00:00Z` (whole seconds, UTC)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
