"""The manager: owns every provider's credential, the renewal schedule and the upstream HTTP client.

Each provider has a slot. A login runs as one task per slot at a time: the scheduled renewal, a forced
refresh and any number of waiting GETs all share it, so a storm of callers costs the upstream one login.
A successful login swaps in a new immutable Credential and schedules the next renewal with APScheduler;
a failed one keeps the old credential (served while it is valid) and schedules a retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tokend.config import ProviderConfig, Settings
from tokend.credential import Credential, State, iso_utc
from tokend.errors import CredentialsRejected, TokenUnavailable, UnknownProvider, UpstreamError
from tokend.logins import Login, LoginCall, LoginReason
from tokend.policy import renewal_delay, retry_delay
from tokend.providers import Provider, build_provider, fetch_within_timeout
from tokend.redact import Redactor
from tokend.upstream import build_client

log = logging.getLogger("tokend")

# A stale token makes a GET start a login at most this often: enough to bridge a late renewal, too
# little to hammer a provider whose tokens are born nearly expired.
STALE_LOGIN_GAP = 1.0

LOGINS_PER_HOST = 32  # logins in flight to one upstream host at once; see Manager._gate

# What a reload applies; the other settings ([server], [upstream]) shape the listener and the HTTP
# client, which are made once at start.
_APPLIED_LIVE = frozenset({"providers", "clients"})


@dataclass
class _Slot:
    """One provider's bookkeeping. The credential in it is only ever replaced whole."""

    name: str
    config: ProviderConfig
    provider: Provider
    credential: Credential | None = None
    inflight: asyncio.Task[Credential] | None = None
    last_attempt: float = -math.inf  # monotonic start of the last login attempt
    quiet_until: float = -math.inf  # monotonic: no login before this, as the provider's Retry-After asked
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


class Manager:
    """Use as `async with Manager(settings) as manager:`; every first login starts on entry."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = Redactor(
            secret.get() for config in settings.providers.values() for secret in config.secrets().values()
        )
        # Built here, not on entry: a bad proxy variable or trust store is then a ConfigError raised where
        # the manager is made, before the server starts, and nothing has to build a client just to check.
        # Nothing connects until the first login.
        self._client = build_client(settings, transport)
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._slots = {
            name: _Slot(name, config, build_provider(name, config, self.redactor))
            for name, config in settings.providers.items()
        }
        self._started = False
        # Called after every login attempt with (provider, outcome: ok | error | rejected, seconds).
        self.login_observers: list[Callable[[str, str, float], None]] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._changes: dict[str, asyncio.Lock] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}
        # Every login goes through this Login; fleet mode wraps it (tokend.fleet) and sets `fleet` for /status.
        self.login: Login = self._direct_login
        self.fleet: Any = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Manager:
        # misfire_grace_time=None: a renewal due while the loop was busy or the machine slept still runs.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self._scheduler.start()
        self._started = True
        for slot in self._slots.values():
            self._start_login(slot, LoginReason.FIRST)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        tasks = [slot.inflight for slot in self._slots.values() if slot.inflight is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    # --- what the API asks -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def current(self, name: str, now: float) -> Credential | None:
        """The hot path: the provider's credential if it may be served at `now`, else None."""
        slot = self._slots.get(name)
        if slot is None or slot.credential is None or not slot.credential.is_fresh(now):
            return None
        return slot.credential

    async def get(self, name: str) -> Credential:
        """A servable credential, waiting (bounded) for a login in flight; else TokenUnavailable."""
        slot = self._slot(name)
        credential = slot.credential
        if credential is not None and credential.is_fresh(time.time()):
            return credential
        if (slot.inflight is None and slot.consecutive_failures == 0
                and time.monotonic() - slot.last_attempt >= STALE_LOGIN_GAP):
            # Stale with no failure behind it: the renewal is late (a busy loop), or the clock jumped, or the
            # machine slept through it. Log in now rather than answer 503; failures are left to the backoff.
            self._start_login(slot, LoginReason.STALE)
        if slot.inflight is None:
            raise self._unavailable(slot)
        try:
            async with asyncio.timeout(self.settings.server.wait_timeout):
                credential = await asyncio.shield(slot.inflight)
        except asyncio.CancelledError:
            if _cancelled_by_us() or not slot.retired:
                raise
            return await self.get(name)  # the provider was replaced (or removed: 404) while we waited
        except TimeoutError:
            raise TokenUnavailable(
                name, f"the login to {name} is still under way after {self.settings.server.wait_timeout:g}s"
            ) from None
        except UpstreamError:
            raise self._unavailable(slot) from None
        return credential

    async def refresh(self, name: str) -> Credential:
        """A forced login, shared with any in flight, and at most one per min_refresh_interval."""
        slot = self._slot(name)
        if slot.inflight is None and not self._may_log_in(slot):
            if slot.credential is not None and slot.consecutive_failures == 0:
                return slot.credential
            if slot.last_error is not None:
                raise _again(slot.last_error)
        try:
            return await asyncio.shield(self._start_login(slot, LoginReason.FORCED))
        except asyncio.CancelledError:
            if _cancelled_by_us() or not slot.retired:
                raise
            return await self.refresh(name)

    def provider_config(self, name: str) -> ProviderConfig:
        return self._slot(name).config

    @property
    def client(self) -> httpx.AsyncClient:
        """The upstream HTTP client, for calls made with a provider's token (Felloh key management)."""
        return self._client

    def changing(self, name: str) -> asyncio.Lock:
        """Held while a provider's settings are being changed (a key rotation): one change at a time."""
        return self._changes.setdefault(self._slot(name).name, asyncio.Lock())

    async def switch_provider(self, name: str, config: ProviderConfig, credential: Credential) -> None:
        """Make `config` the provider's settings, with a credential already obtained with them (key rotation).

        A login in flight under the old settings is waited for first, so that it cannot land afterwards.
        """
        slot = self._slot(name)
        if slot.inflight is not None:
            with contextlib.suppress(UpstreamError):
                await asyncio.shield(slot.inflight)
        slot.config = config
        slot.provider = build_provider(name, config, self.redactor)
        # The old secrets stay known too: a rotated-out key is still a key, wherever it might surface.
        self.redactor.add_secrets(secret.get() for secret in config.secrets().values())
        self._succeeded(slot, credential, 0.0)

    def apply(self, settings: Settings) -> Changes:
        """Make `settings` the running configuration (a reload): see Changes for what happens to whom.

        Providers are compared with what each slot runs now, not with the settings last loaded, so that a
        key rotation already applied does not count as a change when the rewritten files are read back.
        Server and upstream settings belong to the listener and the HTTP client, made once at start: a
        change there is reported, not applied.
        """
        running = {name: slot.config for name, slot in self._slots.items()}
        changes = Changes.between(running, settings.providers)
        changes.restart_needed = [
            part for part in Settings.model_fields
            if part not in _APPLIED_LIVE and getattr(settings, part) != getattr(self.settings, part)
        ]
        for name in (*changes.removed, *changes.changed):
            self._retire(self._slots.pop(name))
        for name in (*changes.added, *changes.changed):
            self._add_slot(name, settings.providers[name])
        kept = {part: getattr(self.settings, part) for part in changes.restart_needed}
        self.settings = settings.model_copy(update=kept)
        return changes

    def replace_provider(self, name: str, config: ProviderConfig) -> None:
        """Run provider `name` with `config` from now on: its old credential is dropped, a login starts."""
        self._retire(self._slot(name))
        self._add_slot(name, config)

    async def settled(self) -> None:
        """Return once no login is in flight (after start: once every first login has succeeded or failed)."""
        while tasks := [slot.inflight for slot in self._slots.values() if slot.inflight is not None]:
            await asyncio.wait(tasks)

    def every(self, seconds: float, job: Callable[[], Awaitable[None]], job_id: str) -> None:
        """Run `job` every `seconds` on the manager's scheduler, from now until the manager stops."""
        assert self._scheduler is not None, "the manager is not started"
        self._scheduler.add_job(job, "interval", seconds=seconds, id=job_id, replace_existing=True)

    def ready(self, names: Iterable[str] | None = None) -> bool:
        """Whether every provider (or each of `names`) holds a token that may be served now."""
        now = time.time()
        slots = self._slots.values() if names is None else [self._slots[name] for name in names]
        return all(slot.credential is not None and slot.credential.is_fresh(now) for slot in slots)

    def expires_at(self, name: str) -> float | None:
        """When the provider's current token expires (None: no token, or one that never expires)."""
        credential = self._slot(name).credential
        return None if credential is None else credential.expires_at

    def state(self, name: str) -> State:
        return _state(self._slot(name), time.time())

    def status(self) -> dict[str, dict[str, Any]]:
        """What /status shows. Never a secret or a token: errors were scrubbed when they were recorded."""
        now = time.time()
        return {name: _status(slot, now) for name, slot in self._slots.items()}

    # --- logins ------------------------------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownProvider(name)
        return slot

    def _add_slot(self, name: str, config: ProviderConfig) -> None:
        self.redactor.add_secrets(secret.get() for secret in config.secrets().values())
        slot = self._slots[name] = _Slot(name, config, build_provider(name, config, self.redactor))
        if self._started:
            self._start_login(slot, LoginReason.FIRST)

    def _retire(self, slot: _Slot) -> None:
        """Take a slot out of service: no more renewals, and its login in flight is cancelled."""
        slot.retired = True
        self._unschedule(slot)
        if slot.inflight is not None:
            slot.inflight.cancel()

    def _may_log_in(self, slot: _Slot) -> bool:
        """Whether a forced refresh may log in now: min_refresh_interval, and any Retry-After, allow it."""
        now = time.monotonic()
        return now - slot.last_attempt >= slot.config.min_refresh_interval and now >= slot.quiet_until

    def _start_login(self, slot: _Slot, reason: LoginReason = LoginReason.RENEWAL) -> asyncio.Task[Credential]:
        if slot.inflight is None:
            slot.inflight = asyncio.create_task(self._login(slot, reason), name=f"tokend-login-{slot.name}")
            slot.inflight.add_done_callback(_retrieve)
        return slot.inflight

    async def _scheduled_login(self, name: str) -> None:
        slot = self._slots.get(name)
        if slot is None:
            return
        try:
            await asyncio.shield(self._start_login(slot))
        except UpstreamError:
            pass  # logged and rescheduled by _login
        except asyncio.CancelledError:
            if _cancelled_by_us() or not slot.retired:
                raise

    async def _login(self, slot: _Slot, reason: LoginReason) -> Credential:
        try:
            async with self._gate(slot.config):  # queued here, before the login's own clock starts
                started = slot.last_attempt = time.monotonic()
                outcome = await self._attempt(slot, LoginCall(slot.name, slot.config, reason, current=slot.credential))
        finally:
            slot.inflight = None
        if isinstance(outcome, Credential):
            self._succeeded(slot, outcome, time.monotonic() - started)
            return outcome
        self._failed(slot, outcome, time.monotonic() - started)
        raise outcome

    async def _direct_login(self, call: LoginCall) -> Credential:
        return await fetch_within_timeout(self._slot(call.name).provider, call.config.timeout, self._client)

    async def _attempt(self, slot: _Slot, call: LoginCall) -> Credential | UpstreamError:
        try:
            return await self.login(call)
        except UpstreamError as exc:
            return exc
        except Exception as exc:  # a provider bug must never stop the renewals of this or other providers
            log.exception("login provider=%s outcome=bug", slot.name)
            return UpstreamError(slot.name, f"unexpected {type(exc).__name__} during login")

    def _gate(self, config: ProviderConfig) -> contextlib.AbstractAsyncContextManager[Any]:
        """At most LOGINS_PER_HOST logins at once to one upstream host. A thousand logins started together
        would otherwise queue inside the HTTP client's pool, whose bookkeeping grows with the queue times
        the connections, and time out there; per host, so that one slow upstream holds up only its own."""
        if config.url is None:
            return contextlib.nullcontext()  # a static key: no upstream to spare
        host = urlsplit(config.url).netloc
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = asyncio.Semaphore(LOGINS_PER_HOST)
        return gate

    def _succeeded(self, slot: _Slot, credential: Credential, duration: float) -> None:
        previous = slot.credential
        slot.credential = credential
        self.redactor.set_tokens(slot.name, [credential.token, previous.token if previous else ""])
        slot.consecutive_failures = 0
        slot.quiet_until = -math.inf
        slot.logins_ok += 1
        self._tell_observers(slot.name, "ok", duration)
        slot.last_success_at = credential.obtained_at
        slot.last_request_id = credential.request_id or slot.last_request_id
        if credential.expires_at is None:
            self._unschedule(slot)
        else:
            first = slot.logins_ok == 1
            delay = renewal_delay(credential.expires_at - time.time(), self._rng, first=first)
            if credential.renew_at is not None:  # the fleet's agreed time: every daemon renews it at once
                delay = max(0.0, credential.renew_at - time.time())
            self._schedule(slot, delay)
        log.info(
            "login provider=%s outcome=ok source=%s expires_at=%s request_id=%s duration_ms=%d next_refresh_in=%s",
            slot.name, credential.source, iso_utc(credential.expires_at) or "never", credential.request_id or "-",
            duration * 1000, _seconds(slot.next_refresh_at),
        )
        if credential.expiry_note and credential.expiry_note != slot.last_expiry_note:
            log.warning("provider=%s expiry corrected: %s", slot.name, credential.expiry_note)
        slot.last_expiry_note = credential.expiry_note

    def _failed(self, slot: _Slot, error: UpstreamError, duration: float) -> None:
        error.message = self.redactor.scrub(error.message)
        error.args = (error.message,)
        slot.consecutive_failures += 1
        slot.logins_failed += 1
        self._tell_observers(slot.name, "rejected" if isinstance(error, CredentialsRejected) else "error", duration)
        slot.last_error, slot.last_error_at = error, time.time()
        slot.last_request_id = error.request_id or slot.last_request_id
        expires_at = slot.credential.expires_at if slot.credential else None
        delay = retry_delay(
            slot.consecutive_failures, self._rng, retryable=error.retryable, retry_after=error.retry_after,
            time_left=None if expires_at is None else expires_at - time.time(), cap=slot.config.max_retry_delay,
        )
        self._schedule(slot, delay)
        if error.retry_after is not None:
            slot.quiet_until = time.monotonic() + error.retry_after
        log.warning(
            "login provider=%s outcome=%s status=%s request_id=%s duration_ms=%d next_attempt_in=%.1fs error=%s",
            slot.name, "rejected" if isinstance(error, CredentialsRejected) else "error",
            error.status or "-", error.request_id or "-", duration * 1000, delay, error.message,
        )

    def _tell_observers(self, name: str, outcome: str, duration: float) -> None:
        for observe in self.login_observers:
            observe(name, outcome, duration)

    def _schedule(self, slot: _Slot, delay: float) -> None:
        if self._scheduler is None or not self._scheduler.running or slot.retired:
            return
        self._scheduler.add_job(
            self._scheduled_login, "date", run_date=datetime.now(UTC) + timedelta(seconds=delay),
            args=[slot.name], id=slot.name, replace_existing=True,
        )
        slot.next_refresh_at = time.time() + delay

    def _unschedule(self, slot: _Slot) -> None:
        if self._scheduler is not None and self._scheduler.running and self._scheduler.get_job(slot.name) is not None:
            self._scheduler.remove_job(slot.name)
        slot.next_refresh_at = None

    def _unavailable(self, slot: _Slot) -> TokenUnavailable:
        if slot.last_error is None:
            return TokenUnavailable(slot.name, f"no valid token for {slot.name} yet")
        when = iso_utc(slot.next_refresh_at)
        return TokenUnavailable(
            slot.name,
            f"no valid token for {slot.name}: {slot.last_error.message}" + (f"; next try at {when}" if when else ""),
            next_attempt=slot.next_refresh_at,
        )


@dataclass
class Changes:
    """What a reload did, by provider name.

    Added and changed providers log in at once; a changed one is replaced whole, its old token dropped,
    so that nothing is served from settings that no longer hold. Unchanged ones keep their tokens and
    make no login. Removed ones answer 404 from now on.
    """

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    restart_needed: list[str] = field(default_factory=list)  # "server", "upstream": read only at start

    @classmethod
    def between(cls, old: dict[str, ProviderConfig], new: dict[str, ProviderConfig]) -> Changes:
        return cls(
            added=[name for name in new if name not in old],
            removed=[name for name in old if name not in new],
            changed=[name for name in new if name in old and new[name] != old[name]],
            unchanged=[name for name in new if name in old and new[name] == old[name]],
        )


def _cancelled_by_us() -> bool:
    """True when the running task itself is being cancelled (shutdown, a client gone), not what it awaits."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieve(task: asyncio.Task[Credential]) -> None:
    # A login nobody awaits (the first one, a scheduled one) has already logged its failure.
    if not task.cancelled():
        task.exception()


def _again(error: UpstreamError) -> UpstreamError:
    """A fresh copy of a recorded error, so re-raising it does not grow its traceback."""
    return UpstreamError(
        error.provider, error.message, status=error.status, request_id=error.request_id,
        retryable=error.retryable, retry_after=error.retry_after,
    )


def _state(slot: _Slot, now: float) -> State:
    if slot.credential is None:
        return State.PENDING if slot.consecutive_failures == 0 else State.FAILED
    if not slot.credential.is_fresh(now):
        return State.EXPIRED
    if slot.inflight is not None:
        return State.REFRESHING
    return State.RETRYING if slot.consecutive_failures else State.OK


def _status(slot: _Slot, now: float) -> dict[str, Any]:
    credential = slot.credential
    expires_in = credential.expires_in(now) if credential else None
    error = slot.last_error
    return {
        "kind": slot.config.kind,
        "state": _state(slot, now).value,
        "source": credential.source if credential else None,
        "expires_at": iso_utc(credential.expires_at) if credential else None,
        "expires_in": None if expires_in is None else max(0, int(expires_in)),
        "last_refresh": iso_utc(slot.last_success_at),
        "next_refresh": iso_utc(slot.next_refresh_at),
        "last_error": None if error is None else {
            "message": error.message, "status": error.status, "request_id": error.request_id,
            "credentials_rejected": isinstance(error, CredentialsRejected), "at": iso_utc(slot.last_error_at),
        },
        "last_request_id": slot.last_request_id,
        "logins": {"ok": slot.logins_ok, "failed": slot.logins_failed},
        "consecutive_failures": slot.consecutive_failures,
    }


def _seconds(timestamp: float | None) -> str:
    return "-" if timestamp is None else f"{max(0.0, timestamp - time.time()):.1f}s"
