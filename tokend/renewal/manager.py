"""The manager: every provider's credential, and when to log in for it.

Each provider has a slot. A login runs as one task per slot at a time: the scheduled renewal, a forced
refresh and any number of waiting GETs all share it, so a storm of callers costs the upstream one login.
Every login goes through the one `Login` the daemon hands in, with the reason for it; every outcome is
announced once (tokend.renewal.events). A success swaps in a new immutable Credential and schedules the next
renewal; a failure keeps the old credential (served while it is valid) and schedules a retry with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal

from tokend.config.settings import Settings
from tokend.credential import SERVE_MARGIN, Credential, State, iso_utc
from tokend.errors import (
    CredentialsRejected,
    RefreshThrottled,
    SignInNeeded,
    TokenUnavailable,
    UnknownProvider,
    UpstreamError,
)
from tokend.logs import seconds_until
from tokend.providers import ProviderConfig
from tokend.redact import Redactor
from tokend.renewal.attempts import Attempts
from tokend.renewal.changes import Changes
from tokend.renewal.events import Announcements, LoginEvent, log_failure, log_success
from tokend.renewal.logins import Login, LoginCall, LoginReason, cancelled_by_us, retrieve_failure
from tokend.renewal.policy import FINISH_GRACE, REJECTED_RETRY, STALE_LOGIN_GAP, renewal_delay
from tokend.renewal.scheduler import Clock, Scheduler
from tokend.renewal.slots import Slot, slot_state, slot_status

log = logging.getLogger("tokend")

# What a reload applies; the other settings ([server], [upstream], [fleet]) shape the listener and the
# HTTP client, which are made once at start.
_APPLIED_LIVE = frozenset({"providers", "clients"})

# A provider's credential kept from an earlier run (tokend.state), or None.
Restore = Callable[[str, ProviderConfig], Credential | None]


class Manager:
    """Use as `async with Manager(...) as manager:` inside the scheduler's lifetime; first logins start on entry."""

    def __init__(
        self,
        settings: Settings,
        *,
        login: Login,
        scheduler: Scheduler,
        redactor: Redactor,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        restore: Restore | None = None,
    ) -> None:
        self.settings = settings
        self._restore = restore
        self._clock = clock or Clock()
        self.redactor = redactor
        self.announcements = Announcements()
        self._attempts = Attempts(login, redactor)
        self._scheduler = scheduler
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._slots = {name: Slot(name, config) for name, config in settings.providers.items()}
        self._started = False
        self._stopping = False
        self._changes: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[Credential]] = set()  # logins of retired slots, still finishing

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Manager:
        self._started = True
        for slot in self._slots.values():
            self._first_login(slot)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._finish_logins()

    async def _finish_logins(self) -> None:
        """At a stop: no new login starts; a login in flight that spends a refresh token is waited for (as long
        as its provider's `timeout`, the bound of a login) so that its answer is kept: a refresh token sent and
        its answer dropped is a spent one left behind. Any other login is cancelled at once: nothing is lost."""
        self._stopping = True
        for slot in self._slots.values():
            self._unschedule(slot)
        slots = [slot for slot in self._slots.values() if slot.inflight is not None]
        for slot in slots:
            if not slot.config.SPENDS_REFRESH_TOKENS and slot.inflight is not None:
                slot.inflight.cancel()
        slots = [slot for slot in slots if slot.config.SPENDS_REFRESH_TOKENS]
        tasks = {slot.inflight for slot in slots if slot.inflight is not None} | self._retiring
        if not tasks:
            return
        bound = max((slot.config.timeout for slot in slots), default=0.0) + FINISH_GRACE
        log.info("stopping logins_in_flight=%d wait_up_to=%.0fs", len(tasks), bound)
        _, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        if credential is not None and credential.is_fresh(self._clock.time()):
            return credential
        slot.asked_at = self._clock.monotonic()
        if slot.inflight is None:
            if slot.consecutive_failures == 0 and self._clock.monotonic() - slot.last_attempt >= STALE_LOGIN_GAP:
                # Stale with no failure behind it: the renewal is late (a busy loop), or the clock jumped, or the
                # machine slept through it. Log in now rather than answer 503; failures are left to the backoff.
                self._start_login(slot, LoginReason.STALE)
            elif (wait := slot.hurried_retry(self._clock.time(), self._clock.monotonic())) is not None:
                self._schedule(slot, wait)  # a client waits: the next retry within expired_retry_delay
        if slot.inflight is None:
            raise slot.unavailable()
        try:
            async with asyncio.timeout(self.settings.server.wait_timeout):
                credential = await asyncio.shield(slot.inflight)
        except asyncio.CancelledError:
            if cancelled_by_us() or not slot.retired:
                raise
            return await self.get(name)  # the provider was replaced (or removed: 404) while we waited
        except TimeoutError:
            raise TokenUnavailable(
                name, f"the login to {name} is still under way after {self.settings.server.wait_timeout:g}s"
            ) from None
        except UpstreamError:
            raise slot.unavailable() from None
        return credential

    async def refresh(self, name: str, rejected: str | None = None) -> Credential:
        """A forced login, shared with any in flight.

        With `rejected` (the token the upstream refused): a login if the current token is still that one,
        none if it has changed; a provider that rejects every new token gets at most one such login per
        min_refresh_interval (RefreshThrottled otherwise). Without: at most one login per min_refresh_interval,
        the current token answered in between. RefreshThrottled also while the provider asked for quiet
        (Retry-After) or refused the credentials within the last minute.
        """
        slot = self._slot(name)
        if rejected is not None:
            return await self._replace_rejected(slot, rejected)
        if slot.inflight is None:
            slot.check_not_quiet(self._clock.time(), self._clock.monotonic())
            if (held := slot.within_refresh_interval(self._clock.time(), self._clock.monotonic())) is not None:
                return held
        return await self._forced_login(slot, None)

    async def _replace_rejected(self, slot: Slot, rejected: str) -> Credential:
        while slot.inflight is not None:  # a login under way will replace the token: share it
            await self._shared(slot, slot.inflight)
            slot = self._slot(slot.name)
        current = slot.credential
        if current is None or not current.is_fresh(self._clock.time()):
            # Nothing served that the name could be: a made-up name must cost no more than a plain refresh.
            return await self.refresh(slot.name)
        if current.token != rejected:
            return current  # already replaced
        slot.check_not_quiet(self._clock.time(), self._clock.monotonic())
        slot.check_refused_again(self._clock.monotonic())
        replaced = await self._forced_login(slot, rejected)
        if replaced.token == rejected:  # a shared cache answered the refused token: no login was allowed yet
            raise RefreshThrottled(
                slot.name, f"not attempted: {slot.name}'s newest token in the fleet is the refused one, and the fleet "
                f"logged in less than {slot.config.min_refresh_interval:g}s ago",
                retry_after=slot.config.min_refresh_interval,
            )
        return replaced

    async def _forced_login(self, slot: Slot, rejected: str | None) -> Credential:
        task = slot.inflight or self._start_login(slot, LoginReason.FORCED, rejected)
        return await self._shared(slot, task)

    async def _shared(self, slot: Slot, task: asyncio.Task[Credential]) -> Credential:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if cancelled_by_us() or not slot.retired:
                raise
            return await self.refresh(slot.name)  # replaced by a reload meanwhile: log in with the new settings

    def held_refresh_token(self, name: str) -> str | None:
        """The refresh token the provider's next login would spend (a user token), if it holds one."""
        held = self._slot(name).held
        return None if held is None else held.refresh_token

    def held_generation(self, name: str) -> int:
        held = self._slot(name).held
        return 0 if held is None else held.generation

    async def quiesce(self, name: str) -> str | None:
        """No renewal from now on, and the login in flight finished: the refresh token held then (a sign-out
        revokes it). A login a client starts afterwards is waited for by `forget`."""
        slot = self._slot(name)
        self._unschedule(slot)
        while slot.inflight is not None:
            with contextlib.suppress(UpstreamError):
                await asyncio.shield(slot.inflight)
            slot = self._slot(name)
        self._unschedule(slot)
        return self.held_refresh_token(name)

    def provider_config(self, name: str) -> ProviderConfig:
        return self._slot(name).config

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
        # The old secrets stay known too: a rotated-out key is still a key, wherever it might surface.
        self.redactor.add_secrets(secret.get() for secret in config.secrets().values())
        self._succeeded(slot, credential, 0.0, LoginReason.FORCED)

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
            part for part in type(settings).model_fields
            if part not in _APPLIED_LIVE and getattr(settings, part) != getattr(self.settings, part)
        ]
        predecessors = {name: self._slots[name] for name in changes.changed}
        for name in (*changes.removed, *changes.changed):
            self._retire(self._slots.pop(name))
        for name in (*changes.added, *changes.changed):
            self._add_slot(name, settings.providers[name], predecessors.get(name))
        kept = {part: getattr(self.settings, part) for part in changes.restart_needed}
        self.settings = settings.model_copy(update=kept)
        return changes

    def replace_provider(self, name: str, config: ProviderConfig) -> None:
        """Run provider `name` with `config` from now on: its old credential is dropped, a login starts."""
        old = self._slot(name)
        self._retire(old)
        self._add_slot(name, config, old)

    def refuse_secret(self, name: str, why: str | None) -> None:
        """Shown in /status until the file is usable again: a changed secret file that was not taken, and why
        (a sentence naming the file, never its content). None: nothing refused."""
        self._slot(name).secret_refused = why

    def secret_refused(self, name: str) -> str | None:
        return self._slot(name).secret_refused

    async def settled(self) -> None:
        """Return once no login is in flight (after start: once every first login has succeeded or failed)."""
        while tasks := [slot.inflight for slot in self._slots.values() if slot.inflight is not None]:
            await asyncio.wait(tasks)

    def ready(self, names: Iterable[str] | None = None) -> bool:
        """Whether every provider (or each of `names`) holds a token that may be served now, or waits for its
        user to sign in: nothing is wrong with the daemon until they do."""
        now = self._clock.time()
        slots = self._slots.values() if names is None else [self._slots[name] for name in names]
        return all(slot_state(slot, now) is State.SIGN_IN or self.serves(slot.name) for slot in slots)

    def serves(self, name: str) -> bool:
        """Whether the provider holds a token that may be served now."""
        credential = self._slot(name).credential
        return credential is not None and credential.is_fresh(self._clock.time())

    def expires_at(self, name: str) -> float | None:
        """When the provider's current token expires (None: no token, or one that never expires)."""
        credential = self._slot(name).credential
        return None if credential is None else credential.expires_at

    def state(self, name: str) -> State:
        return slot_state(self._slot(name), self._clock.time())

    def status(self) -> dict[str, dict[str, Any]]:
        """What /status shows. Never a secret or a token: errors were scrubbed when they were recorded."""
        now = self._clock.time()
        return {name: slot_status(slot, now) for name, slot in self._slots.items()}

    # --- logins ------------------------------------------------------------------------------------------

    def _slot(self, name: str) -> Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownProvider(name)
        return slot

    def _add_slot(self, name: str, config: ProviderConfig, predecessor: Slot | None = None) -> None:
        self.redactor.add_secrets(secret.get() for secret in config.secrets().values())
        slot = self._slots[name] = Slot(name, config)
        if not self._started:
            return
        if predecessor is not None and predecessor.inflight is not None:
            # The old settings' login is never cancelled (its refresh token is already sent): the new slot
            # starts from its answer, and answers its callers meanwhile by waiting for it.
            slot.inflight = asyncio.create_task(self._take_over(slot, predecessor, predecessor.inflight),
                                                name=f"tokend-login-{name}")
            slot.inflight.add_done_callback(retrieve_failure)
            return
        self._first_login(slot, None if predecessor is None else predecessor.inheritance(config))

    async def _take_over(self, slot: Slot, predecessor: Slot, running: asyncio.Task[Credential]) -> Credential:
        try:
            # Whatever it ended with (a credential, an error, or a predecessor's own takeover giving way).
            await asyncio.wait([running])
        finally:
            slot.inflight = None
        if slot.retired or self._stopping:
            raise slot.unavailable()
        self._first_login(slot, predecessor.inheritance(slot.config))
        if slot.inflight is not None:
            return await asyncio.shield(slot.inflight)
        if slot.credential is None:
            raise slot.unavailable()
        return slot.credential

    def _first_login(self, slot: Slot, inherited: Credential | None = None) -> None:
        """A first login, unless a credential kept from an earlier run still serves; a kept one that does
        not (an expired access token) still lends its refresh token to that login, as does one `inherited`
        from the slot a reload replaced (never served: the settings changed)."""
        kept = None if self._restore is None else self._restore(slot.name, slot.config)
        if (kept is not None and kept.expires_at is not None
                and kept.expires_at - self._clock.time() > slot.renew_margin(kept) + SERVE_MARGIN):
            self._restored(slot, kept)
            return
        slot.carried = kept or inherited
        if slot.carried is not None:
            self.redactor.set_tokens(slot.name, [slot.carried.refresh_token or ""])
        self._start_login(slot, LoginReason.FIRST)

    def _restored(self, slot: Slot, kept: Credential) -> None:
        assert kept.expires_at is not None
        now = self._clock.time()
        slot.credential, slot.last_success_at = kept, kept.obtained_at
        self.redactor.set_tokens(slot.name, kept.held_secrets)
        # Renewed when it would have been had the daemon not stopped (two thirds into its life, jittered).
        before = slot.renew_margin(kept)
        due = kept.obtained_at + renewal_delay(kept.expires_at - kept.obtained_at, self._rng, before=before) - now
        self._schedule(slot, max(0.0, min(due, kept.expires_at - now - before)))
        log.info("restored provider=%s expires_at=%s next_refresh_in=%s source=state", slot.name,
                 iso_utc(kept.expires_at), seconds_until(slot.next_refresh_at, now))

    async def forget(self, name: str, error: SignInNeeded) -> None:
        """Drop the provider's credential (a sign-out): nothing is served or renewed until a new sign-in.
        Announced like a failed login, so that what kept the credential forgets it too."""
        slot = self._slot(name)
        if slot.inflight is not None:
            with contextlib.suppress(UpstreamError):
                await asyncio.shield(slot.inflight)
        slot.signed_out(error, self._clock.time())
        self._unschedule(slot)
        self.announcements.announce(LoginEvent(slot.name, LoginReason.FORCED, "rejected", 0.0, error=error))
        log.info("signed_out provider=%s reason=%s", slot.name, error.message)

    def _retire(self, slot: Slot) -> None:
        """Take a slot out of service: no more renewals. Its login in flight finishes (it may have sent a
        refresh token already, whose answer must be kept) but lands nowhere a client sees."""
        slot.retired = True
        self._unschedule(slot)
        if slot.inflight is not None:
            self._retiring.add(slot.inflight)
            slot.inflight.add_done_callback(self._retiring.discard)

    def _start_login(self, slot: Slot, reason: LoginReason, rejected: str | None = None) -> asyncio.Task[Credential]:
        if slot.inflight is None and self._stopping:
            raise TokenUnavailable(slot.name, "tokend is stopping")
        if slot.inflight is None:
            call = LoginCall(slot.name, slot.config, reason, rejected, slot.held, tokens=self)
            slot.inflight = asyncio.create_task(self._login(slot, call), name=f"tokend-login-{slot.name}")
            slot.inflight.add_done_callback(retrieve_failure)
        return slot.inflight

    async def _scheduled_login(self, name: str) -> None:
        slot = self._slots.get(name)
        if slot is None or self._stopping:
            return
        try:
            await asyncio.shield(self._start_login(slot, LoginReason.RENEWAL))
        except UpstreamError:
            pass  # logged and rescheduled by _login
        except asyncio.CancelledError:
            if not (self._stopping or slot.retired):
                raise

    async def _login(self, slot: Slot, call: LoginCall) -> Credential:
        started = slot.last_attempt = self._clock.monotonic()
        if call.reason is LoginReason.FORCED:
            slot.last_forced = started
        try:
            outcome = await self._attempts.attempt(call)
            if (isinstance(outcome, CredentialsRejected)
                    and (fresh := await self._attempts.reread_refused(slot)) is not None):
                outcome = await self._attempts.attempt(dataclasses.replace(call, config=fresh))
        finally:
            slot.inflight = None
        duration = slot.last_duration = self._clock.monotonic() - started
        if isinstance(outcome, Credential) and slot.retired and not self._lands(slot):
            slot.credential, slot.carried = outcome, None  # for the slot that replaced it: its refresh token
            return outcome
        if isinstance(outcome, Credential):
            self._succeeded(slot, outcome, duration, call.reason)
            return outcome
        self._failed(slot, outcome, duration, call.reason)
        raise outcome

    def _lands(self, slot: Slot) -> bool:
        """Whether a retired slot's login may still be announced (and so kept in the state folder): only when
        the provider is still there, with the same login settings."""
        now = self._slots.get(slot.name)
        return now is not None and now.config.login_identity() == slot.config.login_identity()

    def _succeeded(self, slot: Slot, credential: Credential, duration: float, reason: LoginReason) -> None:
        previous = slot.took(credential)
        self.redactor.set_tokens(slot.name, [*credential.held_secrets, *(previous.held_secrets if previous else ())])
        self._schedule_renewal(slot, credential)
        self.announcements.announce(LoginEvent(slot.name, reason, "ok", duration, credential=credential))
        log_success(slot, credential, duration, reason, self._clock.time())

    def _schedule_renewal(self, slot: Slot, credential: Credential) -> None:
        if credential.expires_at is None:
            self._unschedule(slot)
            return
        now = self._clock.time()
        delay = renewal_delay(credential.expires_at - now, self._rng, first=slot.logins_ok == 1,
                              before=slot.config.RENEW_BEFORE_EXPIRY)
        if credential.renew_at is not None:  # the fleet's agreed time: the first daemon to fire renews for all
            delay = max(0.0, credential.renew_at - now)
        self._schedule(slot, delay)

    def _failed(self, slot: Slot, error: UpstreamError, duration: float, reason: LoginReason) -> None:
        if isinstance(error, SignInNeeded) and error.reason == "never_signed_in":
            self._awaits_sign_in(slot, error)
            return
        error.message = self.redactor.scrub(error.message)
        error.args = (error.message,)
        slot.failed(error, self._clock.time(), self._clock.monotonic())
        delay = slot.retry_delay(error, self._clock.time(), self._clock.monotonic(), self._rng)
        self._schedule(slot, delay)
        outcome: Literal["rejected", "error"] = "rejected" if isinstance(error, CredentialsRejected) else "error"
        self.announcements.announce(LoginEvent(slot.name, reason, outcome, duration, error=error))
        log_failure(slot, error, outcome, duration, reason, delay)

    def _awaits_sign_in(self, slot: Slot, error: SignInNeeded) -> None:
        """No refresh token was ever held, so no request was made: not a failed login but a wait for the user's
        first sign-in. Said once; tried again now and then, for a refresh token that may come from elsewhere
        (a secret file read anew, the fleet's record)."""
        if slot.awaiting_sign_in is None:
            log.info("sign_in_needed provider=%s reason=%s command=%r", slot.name, error.reason, error.command)
        slot.awaiting_sign_in = error
        self._schedule(slot, REJECTED_RETRY)

    def _schedule(self, slot: Slot, delay: float) -> None:
        if slot.retired or self._stopping:
            return
        if self._scheduler.at(slot.job_id, delay, self._scheduled_login, slot.name):
            slot.next_refresh_at = self._clock.time() + delay

    def _unschedule(self, slot: Slot) -> None:
        self._scheduler.cancel(slot.job_id)
        slot.next_refresh_at = None
