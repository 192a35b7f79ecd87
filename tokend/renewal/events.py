"""Where a token flows out, there is one event: every login's outcome, announced once by the manager, and
the one log line each outcome makes.

Metrics listen with a plain callback (called at once, so keep it cheap); sinks and caches listen with
`async for event in announcements.listen()`, each with a queue of its own, so a slow listener never holds
up a login, the API, or another listener. Nothing here runs on the token hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokend.credential import Credential, iso_utc
from tokend.errors import UpstreamError
from tokend.logs import seconds_until
from tokend.renewal.logins import LoginReason
from tokend.renewal.slots import Slot

__all__ = ["Announcements", "Listener", "LoginEvent", "log_failure", "log_success"]

log = logging.getLogger("tokend")

LISTENER_BACKLOG = 1024  # events a slow async listener may fall behind by before it misses some


@dataclass(frozen=True)
class LoginEvent:
    name: str  # the provider
    reason: LoginReason
    outcome: Literal["ok", "error", "rejected"]
    seconds: float  # how long the login took
    credential: Credential | None = None  # the new credential, when outcome is "ok"
    error: UpstreamError | None = None  # the (scrubbed) failure otherwise


class Announcements:
    def __init__(self) -> None:
        self._callbacks: list[Callable[[LoginEvent], None]] = []
        self._queues: set[asyncio.Queue[LoginEvent]] = set()

    def add_listener(self, callback: Callable[[LoginEvent], None]) -> None:
        self._callbacks.append(callback)

    def listen(self) -> Listener:
        """Every event from the moment of this call on: `async for event in announcements.listen():`.
        Close it (`aclose`, or leave the loop) to stop listening."""
        return Listener(self._queues)

    def announce(self, event: LoginEvent) -> None:
        for callback in self._callbacks:
            callback(event)
        for queue in self._queues:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("event_dropped behind=%d provider=%s",
                            LISTENER_BACKLOG, event.name)


class Listener:
    """One async listener's queue; registered when made, so no event between making it and the first
    `await` is missed."""

    def __init__(self, queues: set[asyncio.Queue[LoginEvent]]) -> None:
        self._queues = queues
        self._queue: asyncio.Queue[LoginEvent] = asyncio.Queue(LISTENER_BACKLOG)
        queues.add(self._queue)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> LoginEvent:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._queues.discard(self._queue)


def log_success(slot: Slot, credential: Credential, duration: float, reason: LoginReason, now: float) -> None:
    """The log line of a login that succeeded (or of a token adopted from the fleet)."""
    # A token adopted from the fleet is no login of this daemon's: said apart, so that counting the
    # "login" lines of a fleet's logs counts the upstream's logins.
    what = "adopt" if credential.source == "fleet" else "login"
    log.info(
        "%s provider=%s outcome=ok expires_at=%s request_id=%s duration_ms=%d next_refresh_in=%s reason=%s "
        "source=%s", what, slot.name, iso_utc(credential.expires_at) or "never", credential.request_id or "-",
        duration * 1000, seconds_until(slot.next_refresh_at, now), reason, credential.source,
    )
    if credential.expiry_note and credential.expiry_note != slot.last_expiry_note:
        log.warning("expiry_corrected provider=%s note=%s", slot.name, credential.expiry_note)
    slot.last_expiry_note = credential.expiry_note


def log_failure(slot: Slot, error: UpstreamError, outcome: str, duration: float, reason: LoginReason,
                delay: float) -> None:
    """The log line of a login that failed, with when the next one is."""
    log.warning(
        "login provider=%s outcome=%s status=%s request_id=%s duration_ms=%d next_attempt_in=%.1fs reason=%s "
        "error=%s", slot.name, outcome, error.status or "-", error.request_id or "-", duration * 1000, delay,
        reason, error.message,
    )
