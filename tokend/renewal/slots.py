"""One provider's bookkeeping in the manager, and what /status and /readyz show of it."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any

from tokend.credential import SERVE_MARGIN, Credential, State, iso_utc
from tokend.errors import (
    CredentialsRejected,
    FleetUnavailable,
    RefreshThrottled,
    SignInNeeded,
    TokenUnavailable,
    UpstreamError,
)
from tokend.providers import ProviderConfig
from tokend.renewal.policy import REJECTED_RETRY, renew_margin, retry_delay

__all__ = ["Slot", "slot_state", "slot_status"]


# A client asked for an expired token this recently: retries are hurried (expired_retry_delay), so that
# service comes back within seconds of the upstream, not after a backoff grown during the outage.
ASKED_RECENTLY = 60.0


@dataclass
class Slot:
    """One provider's bookkeeping. The credential in it is only ever replaced whole."""

    name: str
    config: ProviderConfig
    credential: Credential | None = None
    # Kept from an earlier run but no longer servable: only its refresh token is of use, to the next login.
    carried: Credential | None = None
    inflight: asyncio.Task[Credential] | None = None
    last_attempt: float = -math.inf  # monotonic start of the last login attempt
    last_forced: float = -math.inf  # monotonic start of the last login a refresh asked for
    last_duration: float = 0.0  # seconds the last login took: room to leave for the next before expiry
    quiet_until: float = -math.inf  # monotonic: no login before this, as the provider's Retry-After asked
    asked_at: float = -math.inf  # monotonic: the last time a client asked while there was no token to serve
    last_success_at: float | None = None  # wall clock, for /status
    next_refresh_at: float | None = None
    last_error: UpstreamError | None = None
    last_error_at: float | None = None
    last_request_id: str | None = None
    last_expiry_note: str | None = None
    consecutive_failures: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    retired: bool = False  # replaced or removed by a reload: its login in flight lands nowhere
    secret_refused: str | None = None  # why a changed secret file was not taken (the running one stays)
    # Set while nothing can be had until the user signs in (never signed in, or signed out): what to run, and why.
    awaiting_sign_in: SignInNeeded | None = None

    @property
    def job_id(self) -> str:
        return f"login:{self.name}"

    @property
    def held(self) -> Credential | None:
        """The credential held: the one served, else one kept only for its refresh token."""
        return self.credential or self.carried

    def signed_out(self, error: SignInNeeded, now: float) -> None:
        """Nothing held any more, until a new sign-in; `error` says so in /status."""
        self.credential = self.carried = None
        self.awaiting_sign_in = error
        self.consecutive_failures += 1
        self.last_error, self.last_error_at = error, now

    def took(self, credential: Credential) -> Credential | None:
        """A login succeeded: hold its credential, clear the failures; the credential it replaces, if any."""
        previous = self.credential or self.carried
        self.credential, self.carried = credential, None
        self.awaiting_sign_in = None
        self.consecutive_failures = 0
        self.quiet_until = -math.inf
        self.logins_ok += 1
        self.last_success_at = credential.obtained_at
        self.last_request_id = credential.request_id or self.last_request_id
        return previous

    def failed(self, error: UpstreamError, now: float, monotonic: float) -> None:
        """A login failed: count it and keep its error; a Retry-After keeps the provider quiet that long."""
        self.consecutive_failures += 1
        self.logins_failed += 1
        self.last_error, self.last_error_at = error, now
        self.last_request_id = error.request_id or self.last_request_id
        if error.retry_after is not None:
            self.quiet_until = monotonic + error.retry_after

    def check_not_quiet(self, now: float, monotonic: float) -> None:
        """RefreshThrottled when the provider asked for quiet or refused the credentials a moment ago."""
        if monotonic < self.quiet_until:
            until = iso_utc(now + self.quiet_until - monotonic)
            raise RefreshThrottled(
                self.name, f"not attempted: the provider asked for no login before {until} (Retry-After)",
                retry_after=self.quiet_until - monotonic,
            )
        if isinstance(self.last_error, CredentialsRejected) and self.consecutive_failures \
                and monotonic - self.last_attempt < REJECTED_RETRY:
            wait = self.last_attempt + REJECTED_RETRY - monotonic
            raise RefreshThrottled(
                self.name, f"not attempted: the provider refused {self.name}'s credentials "
                f"({self.last_error.message}); refused credentials are tried at most once a minute, next at "
                f"{iso_utc(now + wait)}", retry_after=wait,
            )

    def within_refresh_interval(self, now: float, monotonic: float) -> Credential | None:
        """A forced refresh within min_refresh_interval of the last login: the credential held, if it serves and
        nothing failed since; RefreshThrottled when the last login failed; None when a login may be made."""
        since = monotonic - self.last_attempt
        if since >= self.config.min_refresh_interval:
            return None
        if self.credential is not None and self.credential.is_fresh(now) and self.consecutive_failures == 0:
            return self.credential
        if self.last_error is not None:
            # Not the recorded error again as if it were new: say that no login was made, and why.
            raise RefreshThrottled(
                self.name, f"not attempted: the last login failed {since:.0f}s ago ({self.last_error.message}); "
                f"forced logins are made at most once every {self.config.min_refresh_interval:g}s",
                retry_after=self.config.min_refresh_interval - since,
            )
        return None

    def check_refused_again(self, monotonic: float) -> None:
        """RefreshThrottled when a refused token's replacement was refused too within min_refresh_interval."""
        wait = self.last_forced + self.config.min_refresh_interval - monotonic
        if wait > 0:
            raise RefreshThrottled(
                self.name,
                f"not attempted: {self.name}'s newest token was refused too; a new login for a refused token "
                f"is made at most once every {self.config.min_refresh_interval:g}s", retry_after=wait,
            )

    def hurried_retry(self, now: float, monotonic: float) -> float | None:
        """A client asks for a token that has run out: the delay that brings the next retry within
        expired_retry_delay, unless the provider asked for quiet or refused the credentials (those rules still
        win) or waits for its user's sign-in; None when the retry stays where it is."""
        if self.next_refresh_at is None or isinstance(self.last_error, CredentialsRejected) or self.awaiting_sign_in:
            return None
        wait = max(self.config.expired_retry_delay, self.quiet_until - monotonic)
        return wait if self.next_refresh_at - now > wait else None

    def unavailable(self) -> TokenUnavailable:
        """Why no token can be served, with when the next login is."""
        if self.credential is None and self.awaiting_sign_in is not None:
            return TokenUnavailable(self.name, f"no valid token for {self.name}: {self.awaiting_sign_in.message}")
        if self.last_error is None:
            return TokenUnavailable(self.name, f"no valid token for {self.name} yet")
        when = iso_utc(self.next_refresh_at)
        fleet = isinstance(self.last_error, FleetUnavailable)
        return TokenUnavailable(
            self.name,
            f"no valid token for {self.name}: {self.last_error.message}" + (f"; next try at {when}" if when else ""),
            next_attempt=self.next_refresh_at, code="fleet_unavailable" if fleet else "token_unavailable",
            retry_after=self.last_error.retry_after if fleet else None,
        )


    def retry_delay(self, error: UpstreamError, now: float, monotonic: float, rng: random.Random) -> float:
        """The backoff, bounded so that the last retry comes while the token is still served (with room for
        the login itself), and hurried while clients are asking for a token that has run out."""
        credential = self.credential
        serving_left = None
        if credential is not None and credential.expires_at is not None:
            serving_left = credential.expires_at - SERVE_MARGIN - now - self.last_duration
        delay = retry_delay(
            self.consecutive_failures, rng, retryable=error.retryable, retry_after=error.retry_after,
            time_left=serving_left if serving_left is not None and serving_left > 0 else None,
            cap=self.config.max_retry_delay,
        )
        if self.clients_waiting(now, monotonic) and error.retryable:
            delay = max(min(delay, self.config.expired_retry_delay), error.retry_after or 0.0)
        return delay


    def clients_waiting(self, now: float, monotonic: float) -> bool:
        """No token to serve, and a client asked for one within the last minute."""
        fresh = self.credential is not None and self.credential.is_fresh(now)
        return not fresh and monotonic - self.asked_at < ASKED_RECENTLY

    def inheritance(self, config: ProviderConfig) -> Credential | None:
        """What a provider changed by a reload keeps from its old slot: a user token's refresh token, when
        the change leaves the login itself alone (a timeout, an interval). It is the only live one once the
        configured one has been spent; a change of server, client or scope never sees it."""

        held = self.credential or self.carried
        if held is None or held.refresh_token is None or self.config.login_identity() != config.login_identity():
            return None
        return held

    def renew_margin(self, kept: Credential) -> float:
        """How long before its expiry a kept credential is renewed (its kind's margin, for its lifetime)."""
        assert kept.expires_at is not None
        return renew_margin(self.config.RENEW_BEFORE_EXPIRY, kept.expires_at - kept.obtained_at)


def slot_state(slot: Slot, now: float) -> State:
    if slot.credential is None and slot.awaiting_sign_in is not None:
        return State.SIGN_IN
    if slot.credential is None:
        return State.PENDING if slot.consecutive_failures == 0 else State.FAILED
    if not slot.credential.is_fresh(now):
        return State.EXPIRED
    if slot.inflight is not None:
        return State.REFRESHING
    return State.RETRYING if slot.consecutive_failures else State.OK


def slot_status(slot: Slot, now: float) -> dict[str, Any]:
    credential = slot.credential
    expires_in = credential.expires_in(now) if credential else None
    error = slot.last_error
    # A user token that only its user can renew: what they should run, and why.
    sign_in = slot.awaiting_sign_in if slot.credential is None else None
    if sign_in is None and isinstance(error, SignInNeeded) and slot.consecutive_failures:
        sign_in = error
    return {
        "kind": slot.config.kind,
        "state": slot_state(slot, now).value,
        "source": credential.source if credential else None,
        "expires_at": iso_utc(credential.expires_at) if credential else None,
        "expires_in": None if expires_in is None else max(0, int(expires_in)),
        "last_refresh": iso_utc(slot.last_success_at),
        "next_refresh": iso_utc(slot.next_refresh_at),
        "last_error": None if error is None else {
            "message": error.message, "status": error.status, "request_id": error.request_id,
            "credentials_rejected": isinstance(error, CredentialsRejected), "at": iso_utc(slot.last_error_at),
            "since_last_success": slot.consecutive_failures > 0,
        },
        "last_request_id": slot.last_request_id,
        "logins": {"ok": slot.logins_ok, "failed": slot.logins_failed},
        "consecutive_failures": slot.consecutive_failures,
        "sign_in": None if sign_in is None else sign_in.command,
        "sign_in_reason": None if sign_in is None else sign_in.reason,
        **({"secret_file_refused": {"message": slot.secret_refused}} if slot.secret_refused else {}),
    }
