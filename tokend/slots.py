"""One provider's bookkeeping in the manager, and what /status and /readyz show of it."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from tokend.credential import Credential, State, iso_utc
from tokend.errors import CredentialsRejected, SignInNeeded, UpstreamError
from tokend.providers import ProviderConfig

__all__ = ["Slot", "slot_state", "slot_status"]


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

    @property
    def job_id(self) -> str:
        return f"login:{self.name}"


def slot_state(slot: Slot, now: float) -> State:
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
        # A user token that only its user can renew: what they should run.
        "sign_in": error.command if isinstance(error, SignInNeeded) and slot.consecutive_failures else None,
        "sign_in_reason": error.reason if isinstance(error, SignInNeeded) and slot.consecutive_failures else None,
    }
