"""The manager in isolation: a fake login, a fake clock and a scheduler that only records, so every rule of
when to log in is checked in milliseconds, with no server and no sleeping."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tokend.config.settings import Settings
from tokend.credential import SERVE_MARGIN, Credential, State
from tokend.errors import CredentialsRejected, RefreshThrottled, SignInNeeded, TokenUnavailable, UpstreamError
from tokend.redact import Redactor
from tokend.renewal.events import LoginEvent
from tokend.renewal.logins import LoginCall, LoginReason
from tokend.renewal.manager import Manager

START = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - START + 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingScheduler:
    """Keeps the one pending job per id; the test runs it when its fake time comes."""

    running = True

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[float, Callable[..., Awaitable[None]], tuple[Any, ...]]] = {}

    def at(self, job_id: str, delay: float, job: Callable[..., Awaitable[None]], *args: Any) -> bool:
        self.jobs[job_id] = (delay, job, args)
        return True

    def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def delay(self, name: str) -> float:
        return self.jobs[f"login:{name}"][0]

    async def run(self, name: str) -> None:
        _, job, args = self.jobs.pop(f"login:{name}")
        await job(*args)


@dataclass
class FakeLogin:
    clock: FakeClock
    lifetime: float = 60.0
    calls: list[LoginCall] = field(default_factory=list)
    failures: list[UpstreamError] = field(default_factory=list)  # raised by the next logins, in order
    gate: asyncio.Event | None = None  # when set, logins wait for it

    async def __call__(self, call: LoginCall) -> Credential:
        self.calls.append(call)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        token = f"token-{len(self.calls)}"
        return Credential(token=token, token_type="Bearer", expires_at=self.clock.now + self.lifetime,
                          headers={"Authorization": f"Bearer {token}"}, obtained_at=self.clock.now)


def settings(**options: Any) -> Settings:
    provider = {"kind": "static", "key": "k" * 20, **options}  # any kind: the login is the fake's
    return Settings.model_validate({"providers": {"p": provider}})


def run(test: Callable[[Manager, FakeLogin, FakeClock, RecordingScheduler], Awaitable[None]], **options: Any) -> None:
    async def go() -> None:
        clock, scheduler = FakeClock(), RecordingScheduler()
        login = FakeLogin(clock)
        manager = Manager(settings(**options), login=login, scheduler=scheduler,  # type: ignore[arg-type]
                          redactor=Redactor([]), rng=random.Random(7), clock=clock)  # type: ignore[arg-type]
        async with manager:
            await manager.settled()
            await test(manager, login, clock, scheduler)

    asyncio.run(go())


def test_the_first_login_starts_on_entry_and_the_renewal_is_scheduled_inside_the_lifetime() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        assert [call.reason for call in login.calls] == [LoginReason.FIRST]
        assert (await manager.get("p")).token == "token-1"
        assert 0.35 * 60 <= scheduler.delay("p") <= 0.77 * 60
        clock.advance(scheduler.delay("p"))
        await scheduler.run("p")
        assert [call.reason for call in login.calls][-1] is LoginReason.RENEWAL
        assert manager.current("p", clock.now) is not None and manager.current("p", clock.now).token == "token-2"

    run(test)


def test_a_refresh_naming_the_current_token_logs_in_at_once_and_n_callers_share_one_login() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        login.gate = asyncio.Event()
        callers = [asyncio.create_task(manager.refresh("p", rejected="token-1")) for _ in range(50)]
        await asyncio.sleep(0)
        login.gate.set()
        answers = await asyncio.gather(*callers)
        assert {answer.token for answer in answers} == {"token-2"}
        assert len(login.calls) == 2 and login.calls[1].rejected == "token-1"
        # A late caller naming the old token gets the new one, with no login.
        assert (await manager.refresh("p", rejected="token-1")).token == "token-2"
        assert len(login.calls) == 2

    run(test, min_refresh_interval=10)


def test_a_provider_that_rejects_every_new_token_gets_one_login_per_min_refresh_interval() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        assert (await manager.refresh("p", rejected="token-1")).token == "token-2"
        with pytest.raises(RefreshThrottled) as throttled:
            await manager.refresh("p", rejected="token-2")
        assert 9 < throttled.value.retry_after <= 10 and "not attempted" in throttled.value.message
        clock.advance(10.01)
        assert (await manager.refresh("p", rejected="token-2")).token == "token-3"
        assert len(login.calls) == 3

    run(test, min_refresh_interval=10)


def test_a_plain_refresh_within_the_interval_answers_the_current_token_without_a_login() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        assert (await manager.refresh("p")).token == "token-1"
        clock.advance(10.01)
        assert (await manager.refresh("p")).token == "token-2"
        assert len(login.calls) == 2

    run(test, min_refresh_interval=10)


def test_retry_after_and_refused_credentials_stop_forced_refreshes_and_say_why() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        clock.advance(11)
        login.failures.append(UpstreamError("p", "login answered 429", status=429, retry_after=30))
        with pytest.raises(UpstreamError):
            await manager.refresh("p")
        clock.advance(11)
        with pytest.raises(RefreshThrottled) as quiet:
            await manager.refresh("p", rejected="token-1")
        assert "Retry-After" in quiet.value.message and 18 < quiet.value.retry_after <= 19
        clock.advance(20)
        login.failures.append(CredentialsRejected("p", "login answered 401", status=401))
        with pytest.raises(CredentialsRejected):
            await manager.refresh("p")
        clock.advance(30)
        with pytest.raises(RefreshThrottled) as refused:
            await manager.refresh("p")
        assert "refused" in refused.value.message and 29 < refused.value.retry_after <= 30
        assert len(login.calls) == 3

    run(test, min_refresh_interval=10)


def test_retries_before_expiry_keep_coming_until_the_token_stops_being_served() -> None:
    """The retry bound counts to the moment the token stops being served (SERVE_MARGIN before expiry), not
    to the expiry itself: an upstream failing until late in the lifetime is retried until then."""

    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        login.lifetime = 12
        clock.advance(61)
        await manager.refresh("p")  # a 12-second token from now
        serving_ends = clock.now + 12 - SERVE_MARGIN
        clock.advance(0.85 * 12)
        retries = []
        while True:
            login.failures.append(UpstreamError("p", "login answered 503", status=503))
            await scheduler.run("p")
            retry_at = clock.now + scheduler.delay("p")
            if retry_at >= serving_ends:
                break
            retries.append(retry_at)
            clock.advance(scheduler.delay("p"))
        assert retries, "no retry was scheduled before the token stopped being served"
        assert serving_ends - retries[-1] < 1.0  # the last one came within the last second of serving

    run(test, min_refresh_interval=1)


def test_while_clients_ask_for_an_expired_token_the_retries_come_within_expired_retry_delay() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        # A long outage with nobody asking: the token runs out, and the backoff grows past a minute.
        while manager.current("p", clock.now) is not None or scheduler.delay("p") < 60:
            login.failures.append(UpstreamError("p", "login answered 503", status=503))
            clock.advance(scheduler.delay("p"))
            await scheduler.run("p")
        with pytest.raises(TokenUnavailable):
            await manager.get("p")
        assert scheduler.delay("p") <= 15
        login.failures.append(UpstreamError("p", "login answered 503", status=503))
        clock.advance(scheduler.delay("p"))
        await scheduler.run("p")
        assert scheduler.delay("p") <= 15  # still asked for recently: still hurried

    run(test, max_retry_delay=300)


def test_every_login_outcome_is_announced_once_with_its_reason() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        seen: list[LoginEvent] = []
        manager.announcements.add_listener(seen.append)
        listened: list[LoginEvent] = []

        events = manager.announcements.listen()

        async def listen() -> None:
            async for event in events:
                listened.append(event)
                if len(listened) == 2:
                    return

        listener = asyncio.create_task(listen())
        login.failures.append(UpstreamError("p", "login answered 500", status=500))
        clock.advance(11)
        with pytest.raises(UpstreamError):
            await manager.refresh("p")
        clock.advance(11)
        await manager.refresh("p")
        await asyncio.wait_for(listener, 5)
        assert [(e.outcome, e.reason) for e in seen] == [("error", "forced"), ("ok", "forced")]
        assert listened == seen and seen[1].credential is not None and seen[1].credential.token == "token-3"

    run(test, min_refresh_interval=10)


def test_a_plain_refresh_soon_after_a_failed_login_says_it_did_not_try() -> None:
    async def test(manager: Manager, login: FakeLogin, clock: FakeClock, scheduler: RecordingScheduler) -> None:
        clock.advance(11)
        login.failures.append(UpstreamError("p", "login answered 503", status=503))
        with pytest.raises(UpstreamError):
            await manager.refresh("p")  # a real attempt, which fails
        clock.advance(2)
        with pytest.raises(RefreshThrottled) as throttled:  # not the old error passed off as a new one
            await manager.refresh("p")
        assert throttled.value.message.startswith("not attempted: the last login failed 2s ago")
        assert 7.9 < throttled.value.retry_after <= 8 and len(login.calls) == 2

    run(test, min_refresh_interval=10)


def test_a_provider_never_signed_in_waits_in_sign_in_and_leaves_the_daemon_ready(caplog) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        clock, scheduler = FakeClock(), RecordingScheduler()
        login = FakeLogin(clock)
        never = SignInNeeded("p", "p holds no refresh token yet", command="tokend login p", reason="never_signed_in")
        login.failures += [never, never]
        manager = Manager(settings(), login=login, scheduler=scheduler,  # type: ignore[arg-type]
                          redactor=Redactor([]), rng=random.Random(7), clock=clock)  # type: ignore[arg-type]
        seen: list[LoginEvent] = []
        manager.announcements.add_listener(seen.append)
        async with manager:
            await manager.settled()
            assert manager.state("p") is State.SIGN_IN and manager.ready() and not manager.serves("p")
            status = manager.status()["p"]
            assert (status["state"], status["sign_in"], status["sign_in_reason"]) == (
                "sign_in", "tokend login p", "never_signed_in")
            assert status["logins"] == {"ok": 0, "failed": 0} and status["consecutive_failures"] == 0
            assert status["last_error"] is None and seen == []  # no login was made, so none is announced
            with pytest.raises(TokenUnavailable, match="no refresh token yet"):
                await manager.get("p")
            await scheduler.run("p")  # tried again now and then: still waiting, said once
            assert manager.state("p") is State.SIGN_IN
            await scheduler.run("p")  # a refresh token came (the fleet's record, a secret file): ok
            assert manager.state("p") is State.OK and manager.ready() and manager.serves("p")
            assert manager.status()["p"]["sign_in"] is None

    with caplog.at_level(logging.INFO, logger="tokend"):
        asyncio.run(go())
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "sign_in_needed" in line] == [
        "sign_in_needed provider=p reason=never_signed_in command='tokend login p'"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], lines
