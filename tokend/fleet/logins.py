"""FleetLogins: a Login that shares one login per provider per token lifetime across a fleet of daemons.

Whenever the daemon would log in, it first asks Redis for the fleet's current token for that provider and
adopts it if it will do (see `_usable`). Otherwise it takes the provider's lease (SET NX PX with its own
id), logs in through the daemon's own Login, publishes the new record and lets the lease go. The others
wait on pub/sub for that record instead of polling. Redis failing or slow never stops a login: the daemon
then logs in alone, says so, and tries Redis again `retry_after` seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
import time
from types import TracebackType
from typing import Any

from prometheus_client.registry import Collector

from tokend.credential import SERVE_MARGIN, Credential
from tokend.errors import CredentialsRejected, FleetUnavailable, SignInNeeded, UpstreamError
from tokend.fleet.after_outage import REFRESH_KEPT, AfterOutage
from tokend.fleet.config import FleetConfig
from tokend.fleet.envelope import (
    MAX_FAILURE_HOLD,
    FleetKey,
    Lineage,
    RecordError,
    open_failure,
    open_with_lineage,
    provider_secrets,
    seal,
    seal_failure,
)
from tokend.fleet.spenders import Spenders
from tokend.fleet.status import FleetCollector, Health, Tally
from tokend.fleet.store import MAX_KEY_IDS, NotReplicated, Store, StoreError
from tokend.providers import ProviderConfig
from tokend.renewal.logins import Login, LoginCall, LoginReason
from tokend.renewal.policy import renew_margin, renewal_delay

log = logging.getLogger("tokend")

# After a failed login the fleet holds off this long (or as long as the provider's Retry-After asked) before
# another daemon tries: each daemon's own backoff then applies on top.
FAILURE_HOLD = 5.0
REJECTED_HOLD = 60.0  # refused credentials need a person; the daemons' backoff is at least this too
MAX_ALONE_JITTER = 2.0  # seconds: logging in alone after Redis failed, spread so a fleet does not do it at once
_BACKSTOP = 1.0  # a waiter looks at Redis again this often, in case a pub/sub message was lost
KEY_SEEN_WITHIN = 86400.0  # another daemon's key id counts as in use if it wrote within this


class FleetLogins:
    """Use as `async with FleetLogins(inner, config) as login:`, then call `login` like any Login."""

    def __init__(self, inner: Login, config: FleetConfig, *, rng: random.Random | None = None) -> None:
        self._inner = inner
        self.config = config
        self._keys = [FleetKey.of(key, config.namespace) for key in config.key_bytes()]
        self._by_id = {key.id: key for key in self._keys}
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._store = Store(config)
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._shares: dict[str, tuple[ProviderConfig, list[str]]] = {}  # provider -> (its config, share keys)
        self._known: set[str] = set()  # the share keys of this daemon's providers: the only ones listened for
        self._latest: dict[str, str] = {}  # share key -> the last record seen on the channel
        self._events: dict[str, asyncio.Event] = {}  # share key -> set at the next message for it
        self._held: dict[str, tuple[str, str]] = {}  # share key -> (token, record) this daemon holds
        # A user token's line of rotations, per share key: who may spend it, and which records are old ones
        self.spender = secrets.token_hex(8)  # this daemon, as the records it writes name it; stable for the run
        grace = 2 * config.retry_after + config.lease + config.timeout + 2.0
        self._spend = Spenders(self.spender, self._keys[0], grace)
        self._after_outage = AfterOutage(self._store, self._spend, self._keys[0], self._held, self._trouble)
        self._down_until = -1.0
        self.health = Health(self._store.where, config.namespace, self._keys[0].id, lambda: self._store.calls)
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FleetLogins:
        self._listener = asyncio.create_task(self._listen(), name="tokend-fleet-listener")
        log.info("fleet_sharing redis=%s namespace=%s key_id=%s",
                 self._store.where, self.config.namespace, self._keys[0].id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._store.close()

    # --- the Login ---------------------------------------------------------------------------------------

    async def __call__(self, call: LoginCall) -> Credential:
        if (not call.config.fleet or call.config.url is None
                or (call.current is not None and call.current.expires_at is None)):
            return await self._inner(call)  # opted out, or a key that never expires: nothing to share
        tally = self.health.tallies.setdefault(call.name, Tally())
        if time.monotonic() < self._down_until:
            return await self._alone(call, tally, f"Redis is unavailable ({self.health.last_error})")
        try:
            return await self._shared(call, tally)
        except StoreError as exc:
            self._trouble(exc)
            return await self._alone(call, tally, str(exc))

    async def _shared(self, call: LoginCall, tally: Tally) -> Credential:
        shares = self._share_keys(call.name, call.config)
        share = shares[0]
        deadline = time.monotonic() + call.config.timeout + self.config.lease + 1.0
        counted_loss = False
        while True:
            record, won, failed = await self._store.claim(share, self.holder, self._expected(share, call.current))
            self._up()
            sealed_for = share
            if record is None and len(shares) > 1:
                record, sealed_for = await self._old_key_record(shares)
            # A lease won on our own record still gives way to it when it will do (a forced refresh within
            # the fleet-wide min_refresh_interval).
            if (credential := self._usable(call, tally, sealed_for, record)) is not None:
                if won:
                    await self._let_go(share)
                return self._adopt(call, tally, share, record, credential)
            if failed is not None:
                if (error := self._failure(call, tally, share, failed)) is not None:
                    raise error
                won = await self._store.acquire(share, self.holder)  # a failure record that holds no one off
            elif not won and record is not None and record != self._expected(share, call.current):
                won = await self._store.acquire(share, self.holder)  # the claim did not try: not our record
                # Published between our read and our lease? Then that is the token, and no login.
                if (won and (again := await self._read(share)) != record
                        and (fresh := self._usable(call, tally, share, again)) is not None):
                    await self._let_go(share)
                    return self._adopt(call, tally, share, again, fresh)
            if won and record is not None and (opened := self._opened(call, share, record)) is not None:
                try:
                    self._spend.wait_for_spender(call.name, share, call.config, *opened, self.config.retry_after)
                except UpstreamError:
                    await self._let_go(share)
                    raise
            if won and record is None and not self._spend.may_spend_on_empty(share, call.config, call.current):
                # An empty Redis (restarted, or failed over): the daemon that rotated last writes its record
                # first; spending the refresh token this one holds could be a second use of it.
                await self._let_go(share)
                won = False
            if won:
                tally.leases_won += 1
                try:
                    call, base, lineage = self._continued(call, share, record)
                    intent = await self._intend(call, share)
                except (UpstreamError, StoreError):
                    await self._let_go(share)
                    raise
                return await self._log_in_for_fleet(call, tally, share, base, lineage, intent)
            if not counted_loss:
                tally.leases_lost += 1
                counted_loss = True
            left = deadline - time.monotonic()
            if left <= 0:
                return await self._alone(call, tally, "the daemon holding the lease published no token in time")
            latest = await self._next_record(share, record, min(left, _BACKSTOP))
            if latest is not None and (credential := self._usable(call, tally, share, latest)) is not None:
                return self._adopt(call, tally, share, latest, credential)

    def _continued(
        self, call: LoginCall, share: str, record: str | None
    ) -> tuple[LoginCall, str | None, Lineage]:
        """The call to log in with under the lease, the record it continues from (for a user token), and that
        record's lineage.

        A user token's refresh token lives in the fleet's record: whoever holds the lease spends the fleet's
        latest one (even from a record whose access token has expired), never an older one of its own, which
        the server would take for a stolen one; nor one put back (SignInNeeded, refresh_token_spent), except
        for the daemon that has rotated past it alone. None: not a user token, nothing to compare and set."""
        if record is None:
            return call, None if call.current is None or call.current.refresh_token is None else "", Lineage()
        try:
            fleets, lineage = open_with_lineage(record, self._by_id, share, provider_secrets(call.config))
        except RecordError:
            return call, None, Lineage()
        if fleets.refresh_token is None:
            return call, None, lineage
        if (why := self._spend.rolled_back(share, fleets, lineage, call.current)) is not None:
            current = call.current
            if current is not None and self._spend.line(share).rotated == current.token \
                    and current.generation > fleets.generation:
                return call, record, lineage  # rotated alone past it: this daemon's own is the newest
            log.warning("fleet_record_rolled_back provider=%s generation=%d reason=%s", call.name,
                        fleets.generation, why)
            command = getattr(call.config, "sign_in", "tokend login {name}").format(name=call.name)
            raise SignInNeeded(call.name, f"{call.name}'s refresh token in the fleet's record may already have been "
                               f"spent ({why}: an old record put back), and a second use would make the server "
                               f"revoke the whole sign-in: its user must sign in again: run `{command}`",
                               command=command, reason="refresh_token_spent")
        self._spend.saw(share, fleets, lineage)
        return dataclasses.replace(call, current=fleets), record, lineage

    async def _intend(self, call: LoginCall, share: str) -> int | None:
        """Before a user token's refresh token is sent: write the generation about to be spent, acknowledged by
        a replica (a failover keeps it). An intent of another daemon for this generation or a later one means
        the record was put back after that daemon may have spent it (a lagging replica promoted): ask for a
        sign-in. No replica acknowledging: do not spend now (FleetUnavailable). The generation, or None."""
        current = call.current
        if current is None or current.refresh_token is None:
            return None
        try:
            prior = await self._store.intend(share, current.generation, self.spender, int(REFRESH_KEPT * 1000))
        except NotReplicated as exc:
            raise FleetUnavailable(call.name, f"the fleet's Redis did not keep this renewal safe ({exc}); the token "
                                   "held is served until it expires", retry_after=self.config.retry_after) from None
        if prior is None:
            return current.generation
        log.warning("fleet_record_rolled_back provider=%s generation=%d reason=%s", call.name, current.generation,
                    "another daemon was about to spend it or a later one")
        command = getattr(call.config, "sign_in", "tokend login {name}").format(name=call.name)
        raise SignInNeeded(call.name, f"{call.name}'s refresh token in the fleet's record may already have been spent "
                           "(another daemon was about to spend it, and the record was put back since), and a second "
                           "use would make the server revoke the whole sign-in: its user must sign in again: run "
                           f"`{command}`", command=command, reason="refresh_token_spent")

    def _opened(self, call: LoginCall, share: str, record: str) -> tuple[Credential, Lineage] | None:
        try:
            return open_with_lineage(record, self._by_id, share, provider_secrets(call.config))
        except RecordError:
            return None

    async def _log_in_for_fleet(
        self, call: LoginCall, tally: Tally, share: str, base: str | None = None, lineage: Lineage | None = None,
        intent: int | None = None,
    ) -> Credential:
        keeper = asyncio.create_task(self._keep_lease(share, call.name))
        try:
            credential = await self._inner(call)
        except UpstreamError as exc:
            keeper.cancel()
            if intent is not None and exc.status is not None and exc.status < 500:  # refused: nothing spent
                with contextlib.suppress(StoreError):
                    await self._store.forget(share, intent, self.spender)
            await self._failed(call, tally, share, exc)
            raise
        except BaseException:
            keeper.cancel()
            await self._let_go(share)
            raise
        keeper.cancel()
        expires_at = credential.expires_at
        if expires_at is None:
            await self._let_go(share)
            return credential  # never expires: nothing the fleet renews together
        now = time.time()
        delay = renewal_delay(expires_at - now, self._rng, first=call.reason is LoginReason.FIRST,
                              before=call.config.RENEW_BEFORE_EXPIRY)
        credential = dataclasses.replace(credential, renew_at=now + delay)
        spent = call.current.refresh_token if call.current is not None else None
        after = self._spend.after(share, spent, lineage or Lineage()) if credential.refresh_token else None
        record = seal(credential, self._keys[0], share, provider_secrets(call.config), after)
        try:
            if credential.refresh_token is None:
                await self._store.publish(share, record, expires_at, self._keys[0].id)
            elif not await self._store.replace(share, record, max(expires_at, now + REFRESH_KEPT), self._keys[0].id,
                                               base or ""):
                log.warning("fleet provider=%s: another daemon replaced the fleet's refresh token during this login; "
                            "the fleet keeps the other one", call.name)
            self._held[share] = (credential.token, record)
            if credential.refresh_token is not None:  # ours to spend, alone too, until another daemon rotates it
                self._spend.rotated(share, credential)
            await self._store.release(share, self.holder)
            await self._check_key_ids()
        except StoreError as exc:
            self._trouble(exc)  # the login stands; the others log in alone or find it later
            if after is not None:  # rotated, and not written: ours alone to spend, and to write when Redis answers
                self._spend.rotated(share, credential, after)
                self._spend.line(share).unwritten = (credential, after, call.config)
        tally.last = f"logged in for the fleet ({call.reason})"
        return credential

    async def _failed(self, call: LoginCall, tally: Tally, share: str, error: UpstreamError) -> None:
        """Tell the fleet this login failed, so that it holds off for a while instead of every daemon trying
        in turn: what locks accounts is a burst of failed logins, most of all with refused credentials."""
        tally.last = f"login for the fleet failed ({call.reason})"
        hold = REJECTED_HOLD if isinstance(error, CredentialsRejected) else FAILURE_HOLD
        hold = min(max(hold, error.retry_after or 0.0), MAX_FAILURE_HOLD)
        try:
            await self._store.fail(share, seal_failure(error, self._keys[0], share, hold), hold, self.holder)
        except StoreError as exc:
            self._trouble(exc)

    def _failure(self, call: LoginCall, tally: Tally, share: str, failed: str) -> UpstreamError | None:
        """The fleet's recent failed login as this call's own error, or None to log in after all."""
        try:
            error = open_failure(failed, self._by_id, share, call.name)
        except RecordError as exc:
            log.warning("fleet provider=%s ignores the fleet's failure record: %s", call.name, exc)
            return None
        tally.failures_shared += 1
        tally.last = f"the fleet's last login failed; holding off ({call.reason})"
        return error

    async def _alone(self, call: LoginCall, tally: Tally, why: str) -> Credential:
        share = self._share_keys(call.name, call.config)[0]
        if not self._spend.may_spend_own(share, call.config, call.current):
            # Another daemon of the fleet may spend the same refresh token alone: this one waits.
            self._spend.refuse(call.name, share, call.current, why, self.config.retry_after)
        tally.logins_alone += 1
        tally.last = f"logged in alone ({call.reason}): {why}"
        log.warning("fleet_login_alone provider=%s reason=%s", call.name, why)
        current = call.current
        if current is not None and current.expires_at is not None and call.reason is not LoginReason.FORCED:
            # A token still serves: spread the fleet's lone logins, so Redis failing is not a burst upstream.
            left = current.expires_at - time.time() - _margin(call.config, current)
            if left > 0:
                await asyncio.sleep(self._rng.uniform(0, min(MAX_ALONE_JITTER, left / 4)))
        credential = await self._inner(call)
        if credential.refresh_token is not None:  # still the one spender: written when Redis answers again
            held = self._held.get(share)
            base = self._opened(call, share, held[1]) if held is not None else None
            spent = call.current.refresh_token if call.current is not None else None
            lineage = self._spend.after(share, spent, base[1] if base is not None else Lineage())
            self._spend.rotated(share, credential, lineage)
            self._spend.line(share).unwritten = (credential, lineage, call.config)
        return credential

    # --- deciding ----------------------------------------------------------------------------------------

    def _usable(self, call: LoginCall, tally: Tally, share: str, record: str | None) -> Credential | None:
        """The fleet's credential if this call may take it instead of logging in, else None."""
        if record is None:
            return None
        try:
            credential, lineage = open_with_lineage(record, self._by_id, share, provider_secrets(call.config))
        except RecordError as exc:
            tally.unreadable_records += 1
            log.warning("fleet provider=%s cannot use the fleet's token, logging in itself: %s", call.name, exc)
            return None
        if self._spend.rolled_back(share, credential, lineage, call.current) is not None:
            return None  # never adopted; its refresh token is never spent (see _continued)
        self._spend.saw(share, credential, lineage)
        now = time.time()
        if credential.expires_at is None or not credential.is_fresh(now):
            return None
        current = call.current
        if (current is not None and current.expires_at is not None and credential.token != current.token
                and credential.expires_at <= current.expires_at):
            # Expiring no later than what this daemon has: an old record put back (by a Redis writer) never
            # turns a daemon back to a token it has moved on from.
            return None
        if call.reason is LoginReason.FORCED:
            if call.rejected is not None and credential.token != call.rejected:
                return credential  # already replaced, by some daemon of the fleet
            # The fleet-wide min_refresh_interval: a token this recent is as new as a forced refresh may make.
            return credential if now - credential.obtained_at < call.config.min_refresh_interval else None
        if current is not None and credential.token == current.token:
            return None  # the very token being renewed
        # Only with more left than the kind's margin (AWS: 20 minutes, as SDKs refresh 15 minutes ahead): a
        # token due for renewal is renewed, not adopted and served.
        return credential if credential.expires_at - now > _margin(call.config, credential) + SERVE_MARGIN else None

    def _adopt(
        self, call: LoginCall, tally: Tally, share: str, record: str | None, credential: Credential
    ) -> Credential:
        tally.adoptions += 1
        tally.last = f"adopted the fleet's token ({call.reason})"
        if record is not None:
            self._held[share] = (credential.token, record)
        line = self._spend.line(share)
        if line.rotated != credential.token:
            line.rotated = line.unwritten = None  # another daemon's token: no longer ours to spend alone
        return credential  # the manager logs it, as an adoption

    def _expected(self, share: str, current: Credential | None) -> str:
        """The record of the token this daemon holds, if it came from (or went to) the fleet; else ''."""
        held = self._held.get(share)
        return held[1] if held is not None and current is not None and held[0] == current.token else ""

    def _share_keys(self, name: str, config: ProviderConfig) -> list[str]:
        """The provider's share key under each key, the writing key's first; made again after a reload."""
        cached = self._shares.get(name)
        if cached is None or cached[0] is not config:
            cached = self._shares[name] = (config, [key.share_key(config) for key in self._keys])
            self._known = {share for _, shares in self._shares.values() for share in shares}
        return cached[1]

    # --- Redis -------------------------------------------------------------------------------------------

    async def _read(self, share: str) -> str | None:
        (record,) = await self._store.read([share])
        if record is not None:
            self._latest[share] = record
        return record

    async def _old_key_record(self, shares: list[str]) -> tuple[str | None, str]:
        """During a key rotation: a record still written under an old key's share key, and that key."""
        records = await self._store.read(shares[1:])
        return next(((record, old) for record, old in zip(records, shares[1:], strict=True) if record is not None),
                    (None, shares[0]))

    async def _next_record(self, share: str, seen: str | None, timeout: float) -> str | None:
        """Wait up to `timeout` for a message about `share`; the newest record seen then, if new."""
        latest = self._latest.get(share)
        if latest is not None and latest != seen:
            return latest
        event = self._events.setdefault(share, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        latest = self._latest.get(share)
        return latest if latest != seen else None

    async def _keep_lease(self, share: str, name: str) -> None:
        """Renew the lease every third of its life while the login runs: it must not lapse mid-login."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                if not await self._store.renew(share, self.holder):
                    log.warning("fleet provider=%s lost its lease mid-login; another daemon may log in too", name)
                    return
            except StoreError:
                return  # told by the login's own calls

    async def _let_go(self, share: str) -> None:
        try:
            await self._store.release(share, self.holder)
        except StoreError as exc:
            self._trouble(exc)  # the lease expires on its own

    async def _listen(self) -> None:
        """Follow the channel for as long as the daemon runs; after a failure, subscribe again."""
        while True:
            try:
                async for share, record in self._store.messages():
                    if not share:
                        self._up()
                        await self._check_key_ids()
                        continue
                    if share not in self._known:
                        continue  # not a provider of this daemon: remembering it would let a publisher fill memory
                    if record is not None:
                        self._latest[share] = record
                        if record != self._held.get(share, ("", ""))[1] and self._spend.line(share).unwritten is None:
                            self._spend.line(share).rotated = None  # another daemon rotated it: not ours to spend
                    if (event := self._events.pop(share, None)) is not None:
                        event.set()
            except StoreError as exc:
                # Counted and told, but the logins are not sent alone for it: a restarted Redis answers
                # again at once, and each login's own call finds out (in one fast round trip) if it does not.
                self.health.redis_errors += 1
                self.health.last_error = str(exc)
                if self.health.down_since is None:
                    log.info("fleet_subscription_failed error=%s next=subscribe_again", exc)
            await asyncio.sleep(self.config.retry_after * self._rng.uniform(0.5, 1.0))

    async def _check_key_ids(self) -> None:
        """Say so when another daemon of the namespace writes with a key this one lacks: their tokens can
        never be shared with this daemon (a wrong or missing encryption_key)."""
        try:
            seen = await self._store.key_ids()
        except StoreError:
            return
        self.health.note_key_ids(seen, set(self._by_id), MAX_KEY_IDS, KEY_SEEN_WITHIN)

    def _trouble(self, error: StoreError) -> None:
        self.health.redis_errors += 1
        self.health.last_error = str(error)
        if time.monotonic() >= self._down_until and self.health.down_since is None:
            log.warning("fleet_redis_down error=%s next=login_alone retry_in=%gs", error, self.config.retry_after)
            self.health.down_since = time.time()
        self._down_until = time.monotonic() + self.config.retry_after

    def _up(self) -> None:
        self._down_until = -1.0
        if self.health.down_since is not None:
            log.info("fleet_redis_up redis=%s next=share", self._store.where)
            self.health.down_since = None
        self._spend.back()
        self._after_outage.start()

    # --- /status and /metrics ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.health.status()

    def collector(self) -> Collector:
        return FleetCollector(self.health)


def _margin(config: ProviderConfig, credential: Credential) -> float:
    """How long before its expiry `credential` is renewed, by its kind's margin and its lifetime."""
    assert credential.expires_at is not None
    return renew_margin(config.RENEW_BEFORE_EXPIRY, credential.expires_at - credential.obtained_at)

