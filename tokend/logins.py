"""The one place a login happens: a Login takes a LoginCall and returns a Credential.

The daemon builds the direct Login (the provider's own login, within its timeout). Fleet mode wraps it in
another Login that first looks for a token the fleet already has; the manager calls only the outer one.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokend.config import ProviderConfig
from tokend.credential import Credential

__all__ = ["Login", "LoginCall", "LoginReason"]


class LoginReason(enum.StrEnum):
    FIRST = "first"  # first login after start, or after a provider was added or changed
    RENEWAL = "renewal"  # the scheduled renewal, or a retry after a failure
    FORCED = "forced"  # POST /token/NAME/refresh
    STALE = "stale"  # a GET found the token stale and no login in flight


@dataclass(frozen=True)
class LoginCall:
    name: str  # the provider's name in the config
    config: ProviderConfig
    reason: LoginReason
    rejected: str | None = None  # the token a forced refresh named as rejected upstream
    current: Credential | None = None  # the credential this daemon holds now, if any


# Raises tokend.errors.UpstreamError on failure.
Login = Callable[[LoginCall], Awaitable[Credential]]
