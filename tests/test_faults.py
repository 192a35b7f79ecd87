"""Fault injection: the real daemon against fake upstreams that fail in every way upstreams do.

tokend's promise is "a valid token in front of every caller, whatever the upstream does". Each test runs
`tokend run` as a subprocess against the fakes of tokend.testing (real HTTP servers on 127.0.0.1), breaks an
upstream, and checks what callers get, what /status and the log say, and how many logins the upstream saw:
that count is the product's promise to the provider (renew well before expiry, back off, never loop).

Tokens live a few seconds here. Waits poll for a condition under a generous deadline, because the machine
running the tests may be busy; the only plain sleeps wait for the clock itself (sleep_until), to let a
minimum interval pass.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.daemon import HEADERS, Daemon
from tokend.testing import (
    ExpiryStyle,
    FakeFelloh,
    FakeFintechStudios,
    FakeFlotiq,
    FakeProviders,
    FakeServer,
    FakeUpstream,
)

T = TypeVar("T")
Served = dict[str, Any]

# The fakes' own default credentials, which write_fake_config() puts in the daemon's secret files.
FTS_API_KEY = "5f0c7e9a-0b1c-4d2e-8f3a-6b7c8d9e0f1a"
PROXY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


# -- helpers -------------------------------------------------------------------------------------------------


def eventually(probe: Callable[[], T | None], *, what: str, timeout: float = 30.0, every: float = 0.05) -> T:
    """Call `probe` until it returns something other than None (or False); generous, for busy machines."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def sleep_until(moment: float) -> None:
    """Wait for the wall clock to pass `moment`: for a minimum interval to elapse, not for a condition."""
    time.sleep(max(0.0, moment - time.time()))


def unix(iso: str) -> float:
    """The API's `2026-11-22T10:00:00Z` as Unix seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def status_of(client: httpx.Client | Daemon, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = client.get("/status").json()["providers"][name]
    return entry


def works_upstream(url: str, fake: FakeUpstream, served: Served) -> bool:
    """Whether the upstream accepts what tokend served, used exactly as an application would use it."""
    answer = httpx.get(url + fake.protected_path, headers=served["headers"], params=served["query"], timeout=10)
    return answer.status_code == 200


def log_lines(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if text in line]


def logins_by_outcome(daemon: Daemon, provider: str) -> dict[str, float]:
    """The provider's tokend_logins_total from /metrics, by outcome (ok, error, rejected)."""
    counts = {}
    for line in daemon.get("/metrics").text.splitlines():
        outcome = re.search(r'outcome="(\w+)"', line)
        if line.startswith("tokend_logins_total{") and f'provider="{provider}"' in line and outcome:
            counts[outcome[1]] = float(line.rsplit(" ", 1)[1])
    return counts


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def table(options: dict[str, object]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())


def felloh_table(name: str, url: str, secrets: Path, **options: object) -> str:
    """A further Felloh provider for the daemon, with the key files write_fake_config() made in `secrets`."""
    return (f'\n[providers.{name}]\nkind = "felloh"\nbase_url = "{url}"\n'
            f'public_key = {{ file = "{secrets / "felloh_public_key"}" }}\n'
            f'private_key = {{ file = "{secrets / "felloh_private_key"}" }}\n' + table(options))


def fts_table(name: str, url: str, secrets: Path, email: str, **options: object) -> str:
    return (f'\n[providers.{name}]\nkind = "fintech_studios"\nbase_url = "{url}"\nemail = "{email}"\n'
            f'api_key = {{ file = "{secrets / "fts_api_key"}" }}\n'
            f'password = {{ file = "{secrets / "fts_password"}" }}\n' + table(options))


@pytest.fixture
def upstreams() -> Iterator[Callable[[FakeUpstream], FakeServer]]:
    """Serve further fakes, each on its own server. Ask for it before daemon_factory, so that the servers
    stop after the daemon: a daemon still logging in to a stopped server would only add noise."""
    servers: list[FakeServer] = []

    def serve(fake: FakeUpstream) -> FakeServer:
        servers.append(FakeServer(fake.app).start())
        return servers[-1]

    yield serve
    for server in servers:
        server._request_exit()  # all together, then each waited for
    for server in servers:
        server.stop()


# -- the fakes' failure modes --------------------------------------------------------------------------------


def test_the_fakes_fail_in_the_ways_these_tests_need() -> None:
    felloh, fts = FakeFelloh(), FakeFintechStudios()
    with FakeServer(felloh.app) as felloh_server, FakeServer(fts.app) as fts_server:
        def felloh_login() -> httpx.Response:
            return httpx.post(felloh_server.url + "/token", headers={"Accept": "application/json"},
                              json={"public_key": felloh.public_key, "private_key": felloh.private_key})

        def fts_login() -> httpx.Response:
            return httpx.post(fts_server.url + "/auth/token", headers={"x-api-key": FTS_API_KEY},
                              json={"email": fts.email, "password": fts.password})

        # A truncated JSON body, still labelled JSON, with status 200: no login.
        felloh.fail(200, times=1, body='{"data": {"tok', content_type="application/json")
        broken = felloh_login()
        assert (broken.status_code, broken.text) == (200, '{"data": {"tok')
        assert broken.headers["content-type"].startswith("application/json")
        with pytest.raises(ValueError, match="body"):
            felloh.fail(200, content_type="application/json")

        # Garbled expiries: the token still lives `lifetime`, only the answer lies about it.
        expected: dict[ExpiryStyle, Callable[[int], object]] = {
            "milliseconds": lambda real: real * 1000,
            "decades": lambda real: real + 30 * 365 * 86400,
            "lifetime": lambda real: real - int(time.time()),
        }
        for style, reported in expected.items():
            felloh.report_expiry(style)
            data = felloh_login().json()["data"]
            real = int(time.time() + felloh.lifetime)
            assert abs(data["expiry_time"] - reported(real)) <= 2 * (1000 if style == "milliseconds" else 1), style
            assert felloh.is_valid(data["token"])
        felloh.report_expiry("past")
        assert felloh_login().json()["data"]["expiry_time"] < time.time() - 3000
        felloh.report_expiry("missing")
        token = felloh_login().json()["data"]
        assert "expiry_time" not in token
        felloh.report_expiry(None)
        assert abs(felloh_login().json()["data"]["expiry_time"] - (time.time() + 3600)) < 5
        fts.report_expiry("missing")
        answer = fts_login().json()
        assert "expires" not in answer and answer["token"].count(".") == 2  # the JWT's exp still says it
        with pytest.raises(TypeError):
            FakeFlotiq().report_expiry("missing")

        # Revoked tokens are refused before their expiry; a new login works.
        fts_headers = {"x-api-key": FTS_API_KEY, "Authorization": f"Bearer {answer['token']}"}
        felloh_headers = {"Authorization": f"Bearer {token['token']}"}
        assert httpx.get(fts_server.url + fts.protected_path, headers=fts_headers).status_code == 200
        assert httpx.get(felloh_server.url + felloh.protected_path, headers=felloh_headers).status_code == 200
        fts.revoke()
        felloh.revoke()
        assert httpx.get(fts_server.url + fts.protected_path, headers=fts_headers).status_code == 401
        assert httpx.get(felloh_server.url + felloh.protected_path, headers=felloh_headers).status_code == 401
        assert felloh.is_valid(felloh_login().json()["data"]["token"])

        # Down, then back on the same port, counters kept.
        url, attempts = felloh_server.url, felloh.login_attempts
        felloh_server.stop()
        with pytest.raises(httpx.ConnectError):
            felloh_login()
        assert felloh_server.restart().url == url
        assert felloh_login().status_code == 200
        assert felloh.login_attempts == attempts + 1 == len(felloh.login_attempt_times)
        assert felloh.login_attempt_times == sorted(felloh.login_attempt_times)


# -- transient failures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outage:
    """One way for an upstream to fail for a while, and what tokend should say about it."""

    name: str  # also the provider's name in the daemon
    begin: Callable[[FakeFelloh, FakeServer], object]
    end: Callable[[FakeFelloh, FakeServer], object]
    says: str  # found in the 502, in /status last_error and in the 503
    status: int | None  # the upstream status /status reports with it
    options: tuple[tuple[str, object], ...] = ()


def _recover(fake: FakeFelloh, server: FakeServer) -> None:
    fake.recover()


OUTAGES = [
    Outage("http-503", lambda fake, _: fake.fail(503), _recover, "login answered 503", 503),
    Outage("throttled-429", lambda fake, _: fake.fail(429, retry_after=1), _recover, "login answered 429", 429),
    Outage("hanging", lambda fake, _: fake.hang(60), _recover, "timed out after 1s", None, (("timeout", 1),)),
    Outage("refused", lambda _, server: server.stop(), lambda _, server: server.restart(), "could not reach", None),
    Outage("html-200", lambda fake, _: fake.fail(200, body=PROXY_PAGE), _recover, "200 but not with JSON", 200),
    Outage(
        "truncated-json-200",
        lambda fake, _: fake.fail(200, body='{"data": {"token": "abc', content_type="application/json"),
        _recover, "200 but not with JSON", 200,
    ),
    Outage(
        "no-token-200",
        lambda fake, _: fake.fail(200, body=json.dumps({"data": {}, "errors": [], "meta": {}})),
        _recover, "malformed: no data.token", None,
    ),
]
MIN_INTERVAL = 0.2


def ride_out(daemon: Daemon, outage: Outage, fake: FakeFelloh, server: FakeServer) -> None:
    """One outage from a caller's side: served while valid, 503 once expired, served again once over."""
    name = outage.name
    with httpx.Client(base_url=daemon.url, headers=HEADERS, timeout=30) as client:
        before = client.get(f"/token/{name}").json()["token"]
        sleep_until(fake.login_attempt_times[-1] + MIN_INTERVAL + 0.1)  # so that a forced login logs in
        outage.begin(fake, server)

        # A forced login meets the outage: 502 with the upstream's error. Retries with backoff follow.
        forced = client.post(f"/token/{name}/refresh")
        assert forced.status_code == 502 and forced.json()["error"] == "refresh_failed", forced.text
        assert outage.says in forced.json()["message"], forced.text

        # /status: retrying, why, and when the next try is; the still-valid token is served and works.
        def in_retrying() -> dict[str, Any] | None:
            status = status_of(client, name)  # between tries; "refreshing" while one is in flight
            return status if status["state"] == "retrying" else None

        retrying = eventually(in_retrying, what=f"{name} retrying")
        assert outage.says in retrying["last_error"]["message"], retrying
        assert retrying["last_error"]["status"] == outage.status, retrying
        assert retrying["last_error"]["credentials_rejected"] is False, retrying
        assert retrying["next_refresh"] is not None and retrying["expires_in"] >= 1, retrying
        served = client.get(f"/token/{name}")
        assert served.status_code == 200 and served.json()["token"] == before, served.text
        assert fake.is_valid(before) if outage.name == "refused" else works_upstream(server.url, fake, served.json())

        # Until it expires, GET serves it (never dead); then 503 with the last error and the next attempt.
        def unavailable() -> httpx.Response | None:
            answer = client.get(f"/token/{name}")
            if answer.status_code == 200:
                assert answer.json()["token"] == before and fake.is_valid(before), answer.text
                return None
            return answer

        refused = eventually(unavailable, what=f"{name} to expire", every=0.1)
        body = refused.json()
        assert refused.status_code == 503 and body["error"] == "token_unavailable", refused.text
        assert body["provider"] == name and outage.says in body["message"], refused.text
        assert body["next_attempt"] is not None and unix(body["next_attempt"]) > time.time() - 2, refused.text
        assert status_of(client, name)["state"] == "expired"

        # The upstream comes back: service resumes by itself, with no restart and no caller's help.
        fake.lifetime = 3600  # the token that ends the outage is the last login of the test
        outage.end(fake, server)
        due = unix(status_of(client, name)["next_refresh"])

        def recovered() -> Served | None:
            answer = client.get(f"/token/{name}")
            return answer.json() if answer.status_code == 200 else None

        after = eventually(recovered, what=f"{name} to recover", timeout=max(20.0, due - time.time() + 15))
        assert after["token"] != before and works_upstream(server.url, fake, after)
        assert status_of(client, name)["state"] == "ok"


def test_each_transient_failure_is_retried_with_backoff_served_through_and_recovered(
    upstreams: Callable[[FakeUpstream], FakeServer], daemon_factory: Callable[..., Daemon], tmp_path: Path,
) -> None:
    # All outages at once, each on its own provider and fake, so that the whole matrix costs one token lifetime.
    fakes = {outage.name: FakeFelloh(lifetime=6) for outage in OUTAGES}
    servers = {name: upstreams(fake) for name, fake in fakes.items()}
    extra = "".join(
        felloh_table(o.name, servers[o.name].url, tmp_path, min_refresh_interval=MIN_INTERVAL, **dict(o.options))
        for o in OUTAGES
    )
    daemon = daemon_factory(extra=extra)
    with ThreadPoolExecutor(len(OUTAGES)) as pool:
        runs = {o.name: pool.submit(ride_out, daemon, o, fakes[o.name], servers[o.name]) for o in OUTAGES}
    problems = {name: run.exception() for name, run in runs.items() if run.exception() is not None}
    assert not problems, "\n".join(f"{name}: {problem!r}" for name, problem in problems.items()) + daemon.log()

    statuses = daemon.get("/status").json()["providers"]
    for outage in OUTAGES:
        name, fake = outage.name, fakes[outage.name]
        failed = statuses[name]["logins"]["failed"]
        # Two logins in all: the first, and the one that ended the outage. In between, a few tries spaced
        # by a backoff (never under its 0.5 s floor): a handful over the ~6 s outage, not a loop.
        assert fake.logins == 2 and statuses[name]["logins"]["ok"] == 2, (name, fake.logins, statuses[name])
        assert 2 <= failed <= 12, (name, failed)
        assert fake.login_attempts == 2 + (0 if name == "refused" else failed), (name, fake.login_attempts, failed)
        if name != "refused":
            assert min(gaps(fake.login_attempt_times[1:])) >= 0.4, (name, gaps(fake.login_attempt_times))
        errors = log_lines(daemon, f"login provider={name} outcome=")
        assert sum("outcome=error" in line for line in errors) == failed, (name, errors)
        assert not any("outcome=rejected" in line for line in errors), (name, errors)
        assert logins_by_outcome(daemon, name) == {"ok": 2, "error": failed}, name


def test_a_429_retry_after_is_honoured_by_the_retry(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    daemon = daemon_factory(min_refresh_interval=MIN_INTERVAL)
    felloh = fakes.felloh
    before = daemon.get("/token/felloh").json()
    sleep_until(felloh.login_attempt_times[-1] + MIN_INTERVAL + 0.1)
    felloh.fail(429, times=1, retry_after=3)

    forced = daemon.post("/token/felloh/refresh")
    assert forced.status_code == 502 and forced.json()["upstream_status"] == 429, forced.text
    throttled_at = felloh.login_attempt_times[-1]
    status = status_of(daemon, "felloh")
    assert status["state"] == "retrying" and status["last_error"]["status"] == 429, status
    assert status["last_error"]["credentials_rejected"] is False
    assert unix(status["next_refresh"]) >= throttled_at + 3 - 1, status  # whole seconds in /status
    served = daemon.get("/token/felloh").json()
    assert served["token"] == before["token"] and works_upstream(fakes.felloh_url, felloh, served)

    eventually(lambda: felloh.logins == 2, what="the retry after Retry-After")
    # No login before the 3 s the provider asked for, then exactly one: the retry, which succeeds.
    assert felloh.login_attempts == 3, felloh.login_attempt_times
    assert 3 - 0.05 <= felloh.login_attempt_times[2] - throttled_at < 10, gaps(felloh.login_attempt_times)
    assert len(log_lines(daemon, "login provider=felloh outcome=error status=429")) == 1
    after = daemon.get("/token/felloh").json()
    assert after["token"] != before["token"] and works_upstream(fakes.felloh_url, felloh, after)


def test_a_forced_refresh_does_not_jump_a_retry_after(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    """A fleet forcing refreshes must not log in while the provider said to wait: Retry-After binds them too."""
    daemon = daemon_factory(min_refresh_interval=MIN_INTERVAL)
    felloh = fakes.felloh
    before = daemon.get("/token/felloh").json()["token"]
    sleep_until(felloh.login_attempt_times[-1] + MIN_INTERVAL + 0.1)
    felloh.fail(429, times=1, retry_after=4)
    assert daemon.post("/token/felloh/refresh").status_code == 502
    throttled_at = felloh.login_attempt_times[-1]
    sleep_until(throttled_at + MIN_INTERVAL + 0.1)  # past min_refresh_interval, well within Retry-After

    again = daemon.post("/token/felloh/refresh")
    attempts = felloh.login_attempt_times[1:]
    assert attempts == [throttled_at], f"a forced refresh logged in {gaps(attempts)} s after a 429 asking for 4 s"
    # It says that it did not try, and until when the provider asked for quiet.
    assert again.status_code == 429 and again.json()["error"] == "refresh_throttled", again.text
    assert "not attempted" in again.json()["message"] and "Retry-After" in again.json()["message"]
    assert 1 <= int(again.headers["retry-after"]) <= 4
    assert daemon.get("/token/felloh").json()["token"] == before  # the valid token is still served


# -- credentials refused -------------------------------------------------------------------------------------


def test_refused_credentials_are_reported_as_such_and_retried_slowly(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    daemon = daemon_factory(min_refresh_interval=MIN_INTERVAL)
    before = {name: daemon.get(f"/token/{name}").json() for name in ("felloh", "fts")}
    sleep_until(max(fakes.felloh.login_attempt_times[-1], fakes.fintech_studios.login_attempt_times[-1]) + 0.3)
    # Rotated elsewhere: Felloh refuses the key pair (401), FinTech Studios the API key (403).
    fakes.felloh.private_key = "rotated-in-the-dashboard"
    fakes.fintech_studios.api_key = "revoked-api-key"

    for name, code in (("felloh", 401), ("fts", 403)):
        forced = daemon.post(f"/token/{name}/refresh")
        assert forced.status_code == 502 and forced.json()["upstream_status"] == code, forced.text
        status = status_of(daemon, name)
        assert status["state"] == "retrying", status
        assert status["last_error"]["credentials_rejected"] is True and status["last_error"]["status"] == code
        assert unix(status["next_refresh"]) > time.time() + 50, status  # a minute, not seconds
        served = daemon.get(f"/token/{name}").json()
        assert served["token"] == before[name]["token"]
    assert works_upstream(fakes.felloh_url, fakes.felloh, before["felloh"])

    # Far shorter than the minute: no second try at credentials a person has to fix.
    window_end = time.time() + 5
    while time.time() < window_end:
        assert (fakes.felloh.login_attempts, fakes.fintech_studios.login_attempts) == (2, 2)
        time.sleep(0.1)
    assert (fakes.felloh.logins, fakes.fintech_studios.logins) == (1, 1)
    for name, code in (("felloh", 401), ("fts", 403)):
        lines = log_lines(daemon, f"login provider={name} outcome=")
        assert len(lines) == 2 and f"outcome=rejected status={code}" in lines[1], lines
        assert not any("status=429" in line or "outcome=error" in line for line in lines), lines
        assert logins_by_outcome(daemon, name) == {"ok": 1, "rejected": 1}


def test_a_refused_renewal_is_not_retried_in_a_burst_before_expiry(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    """The renewal of a short-lived token is refused. A retry before expiry is fair (the credentials may be
    fixed by then), but halving the wait down to its 0.5 s floor is a burst of logins with credentials the
    provider just called wrong, which is what gets an account locked."""
    fakes.felloh.lifetime = 4  # renewed 2 s before it expires
    daemon = daemon_factory()
    fakes.felloh.private_key = "rotated-in-the-dashboard"
    eventually(lambda: status_of(daemon, "felloh")["logins"]["failed"] >= 1, what="the renewal to be refused")
    status = status_of(daemon, "felloh")
    assert status["last_error"]["credentials_rejected"] is True and status["last_error"]["status"] == 401
    first_refused = fakes.felloh.login_attempt_times[1]

    sleep_until(first_refused + 5)  # the token's end, and 3 s past it
    unavailable = daemon.get("/token/felloh").json()
    assert unavailable["error"] == "token_unavailable" and "401" in unavailable["message"], unavailable
    refused = fakes.felloh.login_attempt_times[1:]
    assert fakes.felloh.logins == 1
    assert len(refused) <= 2, f"refused credentials were tried {len(refused)} times, {gaps(refused)} s apart"


# -- expiry sanity ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Odd:
    """A provider whose upstream reports expiries oddly, and what tokend should make of them."""

    name: str
    kind: str  # "felloh", or "fts" (whose tokens are JWTs)
    style: ExpiryStyle
    lifetime: float  # what the token really lives
    expires_in: tuple[float, float]  # what tokend should serve
    note: str  # in the one log line that says what was corrected
    options: tuple[tuple[str, object], ...] = ()


ODD_EXPIRIES = [
    Odd("millis", "felloh", "milliseconds", 1800, (1790, 1800), "in milliseconds; divided by 1000"),
    Odd("skewed", "felloh", "past", 3600, (50, 60), "already past"),
    Odd("skewed-short", "felloh", "past", 3600, (0, 4), "already past", (("max_lifetime", 4),)),
    Odd("decades", "felloh", "decades", 3600, (90, 100), "capped at max_lifetime", (("max_lifetime", 100),)),
    Odd("jwt-exp", "fts", "missing", 1800, (1790, 1800), "JWT exp claim used", (("default_lifetime", 50),)),
    Odd("opaque", "felloh", "missing", 3600, (40, 50), "default_lifetime used", (("default_lifetime", 50),)),
    Odd("relative", "felloh", "lifetime", 1800, (1790, 1800), "lifetime in seconds"),
]


def test_senseless_expiries_are_corrected_logged_once_and_never_loop(
    upstreams: Callable[[FakeUpstream], FakeServer], daemon_factory: Callable[..., Daemon],
    fakes: FakeProviders, tmp_path: Path,
) -> None:
    odd_fakes: dict[str, FakeFelloh | FakeFintechStudios] = {}
    extra = ""
    for odd in ODD_EXPIRIES:
        fake = FakeFelloh(lifetime=odd.lifetime) if odd.kind == "felloh" else FakeFintechStudios(lifetime=odd.lifetime)
        fake.report_expiry(odd.style)
        odd_fakes[odd.name] = fake
        url = upstreams(fake).url
        options = {"min_refresh_interval": MIN_INTERVAL, **dict(odd.options)}
        extra += (felloh_table(odd.name, url, tmp_path, **options) if odd.kind == "felloh"
                  else fts_table(odd.name, url, tmp_path, fakes.fintech_studios.email, **options))
    daemon = daemon_factory(extra=extra)

    def check(odd: Odd) -> str:
        answer = daemon.get(f"/token/{odd.name}")
        assert answer.status_code == 200, (odd.name, answer.text)
        served = answer.json()
        low, high = odd.expires_in
        assert low <= served["expires_in"] <= high, (odd.name, served["expires_in"])
        assert odd_fakes[odd.name].is_valid(served["token"]), odd.name
        token: str = served["token"]
        return token

    first = {odd.name: check(odd) for odd in ODD_EXPIRIES}
    # Two forced logins each: the same odd expiry twice more, still logged only once per provider.
    for _ in range(2):
        sleep_until(max(fake.login_attempt_times[-1] for fake in odd_fakes.values()) + MIN_INTERVAL + 0.1)
        for odd in ODD_EXPIRIES:
            forced = daemon.post(f"/token/{odd.name}/refresh")
            assert forced.status_code == 200 and forced.json()["token"] != first[odd.name], (odd.name, forced.text)
    for odd in ODD_EXPIRIES:
        check(odd)

    # An expiry in the past is never a login loop: callers asking all the time cost no login at all with
    # 60 s tokens, and one every couple of seconds with max_lifetime = 4.
    short = odd_fakes["skewed-short"]
    logins_before = {name: fake.logins for name, fake in odd_fakes.items()}
    window_end = time.time() + 4
    while time.time() < window_end:
        for name in ("skewed", "skewed-short"):
            answer = daemon.get(f"/token/{name}")
            assert answer.status_code == 200 and odd_fakes[name].is_valid(answer.json()["token"]), answer.text
        time.sleep(0.05)
    assert odd_fakes["skewed"].logins == logins_before["skewed"] == 3
    assert 1 <= short.logins - logins_before["skewed-short"] <= 4, gaps(short.login_attempt_times)
    # Never closer than min_refresh_interval (forced) or the renewal floor: 0.2 s, less the clocks' jitter.
    assert min(gaps(short.login_attempt_times)) >= MIN_INTERVAL - 0.05, gaps(short.login_attempt_times)

    for odd in ODD_EXPIRIES:
        if odd.name != "skewed-short":
            assert odd_fakes[odd.name].logins == 3, (odd.name, odd_fakes[odd.name].logins)
        notes = log_lines(daemon, f"expiry_corrected provider={odd.name} ")
        assert len(notes) == 1 and odd.note in notes[0], (odd.name, notes)


# -- isolation ---------------------------------------------------------------------------------------------------


def test_a_hanging_upstream_delays_no_other_provider_nor_the_api_nor_shutdown(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    fakes.fintech_studios.lifetime = 3  # renewed every second or so while Felloh's login hangs
    daemon = daemon_factory(min_refresh_interval=MIN_INTERVAL, timeout=30)  # a hung login waits 30 s
    felloh_token = daemon.get("/token/felloh").json()["token"]
    sleep_until(fakes.felloh.login_attempt_times[-1] + MIN_INTERVAL + 0.1)
    fakes.felloh.hang(60)
    fts_logins = fakes.fintech_studios.logins

    with httpx.Client(base_url=daemon.url, headers=HEADERS, timeout=30) as client:
        stuck = threading.Thread(target=lambda: client.post("/token/felloh/refresh"), daemon=True)
        stuck.start()
        eventually(lambda: status_of(daemon, "felloh")["state"] == "refreshing", what="Felloh's login to hang")
        slowest = 0.0
        window_end = time.time() + 3
        while time.time() < window_end:
            for path in ("/token/fts", "/token/felloh", "/livez", "/readyz", "/status", "/token/flotiq"):
                started = time.monotonic()
                answer = daemon.get(path)
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status_code == 200, (path, answer.text)
            assert fakes.fintech_studios.is_valid(daemon.get("/token/fts").json()["token"])
            time.sleep(0.05)
        # Felloh's own token, still valid, is served while its login hangs; nothing waits on that login.
        assert daemon.get("/token/felloh").json()["token"] == felloh_token
        assert status_of(daemon, "felloh")["state"] == "refreshing"
        assert slowest < 2.0, f"a request took {slowest:.2f}s while another provider's login hung"
        assert (fakes.felloh.login_attempts, fakes.felloh.logins) == (2, 1)
        # FinTech Studios kept renewing on schedule meanwhile: every 0.5-1 s (2 s before its 2-3 s tokens die).
        assert 2 <= fakes.fintech_studios.logins - fts_logins <= 8, gaps(fakes.fintech_studios.login_attempt_times)

        code, took = daemon.terminate()
        assert code == 0 and took < 6, (code, took, daemon.log())  # 3 s of grace for the request still waiting
        stuck.join(timeout=10)


# -- forced refresh storm -------------------------------------------------------------------------------------


def test_a_fleet_forcing_refreshes_costs_one_login_per_interval_and_all_get_the_same_new_token(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    # Long enough for 120 forced refreshes from one busy client process to all land within one interval.
    interval = 2.5
    felloh = fakes.felloh
    daemon = daemon_factory(min_refresh_interval=interval)
    old = daemon.get("/token/felloh").json()
    sleep_until(felloh.login_attempt_times[-1] + interval + 0.1)

    # The provider revokes the tokens early: every client's upstream call now fails with 401...
    felloh.revoke()
    assert not works_upstream(fakes.felloh_url, felloh, old)
    felloh.hang(0.5)  # ...and the new login takes a while, so callers pile up on it

    async def fleet(waves: int, clients: int, every: float) -> list[httpx.Response]:
        """`waves` of `clients` concurrent forced refreshes, a wave starting `every` seconds."""
        async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS, timeout=30) as client:

            async def wave(start: float) -> list[httpx.Response]:
                await asyncio.sleep(start)
                return await asyncio.gather(*(client.post("/token/felloh/refresh") for _ in range(clients)))

            answers = await asyncio.gather(*(wave(n * every) for n in range(waves)))
        return [answer for answered in answers for answer in answered]

    # Three waves of 40: the first starts the login, the second joins it in flight, the third comes after it.
    answers = asyncio.run(fleet(waves=3, clients=40, every=0.3))
    assert [answer.status_code for answer in answers] == [200] * 120
    tokens = {answer.json()["token"] for answer in answers}
    assert len(tokens) == 1 and old["token"] not in tokens, len(tokens)
    assert works_upstream(fakes.felloh_url, felloh, answers[0].json())
    assert (felloh.login_attempts, felloh.logins) == (2, 2)

    # A fleet that keeps forcing for 6 s or so: at most one login per interval, each caller a valid token.
    felloh.recover()
    started = time.time()
    answers = asyncio.run(fleet(waves=50, clients=5, every=0.12))
    assert all(answer.status_code == 200 and felloh.is_valid(answer.json()["token"]) for answer in answers)
    storm = [moment for moment in felloh.login_attempt_times if moment >= started]
    assert 1 <= len(storm) <= (time.time() - started) / interval + 1, gaps(storm)
    # As the upstream sees them: a login's request may reach it up to a scheduling delay late.
    assert min(gaps(felloh.login_attempt_times[1:])) >= interval - 0.25, gaps(felloh.login_attempt_times)


# -- suspend -------------------------------------------------------------------------------------------------------


def test_after_a_suspend_a_stale_token_waits_for_a_slow_login_and_a_failed_one_is_503_never_stale(
    daemon_factory: Callable[..., Daemon], fakes: FakeProviders
) -> None:
    """test_e2e covers a suspend with a healthy upstream. Here the upstream is slow (Felloh) or down (FinTech
    Studios) when the machine wakes: a request already waiting gets the new token once the login ends, or a
    503, and never the token that died during the suspend. (A wall-clock jump without a suspend would need
    faketime or privileges; it takes the same path: a token found stale when served.)"""
    fakes.felloh.lifetime = fakes.fintech_studios.lifetime = 4  # renewed 1-2 s after the first login
    daemon = daemon_factory()
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    attempts = {"felloh": fakes.felloh.login_attempts, "fts": fakes.fintech_studios.login_attempts}
    arrived: dict[str, tuple[httpx.Response, float]] = {}

    def ask() -> None:
        answer = daemon.get("/token/felloh")
        arrived["felloh"] = answer, time.monotonic()

    try:
        # A caller asks while the machine sleeps: the request waits in the listen queue until it wakes.
        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        eventually(lambda: not (fakes.felloh.valid_tokens() or fakes.fintech_studios.valid_tokens()),
                   what="every token to die during the suspend", every=0.1)
        fakes.felloh.lifetime = fakes.fintech_studios.lifetime = 3600
        fakes.felloh.hang(1.5)
        fakes.fintech_studios.fail(503)
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    woke = time.monotonic()
    fts = daemon.get("/token/fts")
    asker.join(timeout=30)
    felloh, at = arrived["felloh"]

    assert felloh.status_code == 200, felloh.text
    assert works_upstream(fakes.felloh_url, fakes.felloh, felloh.json())
    assert 1.3 <= at - woke < 10, at - woke  # it waited for the slow login, and no longer than that
    assert (fakes.felloh.login_attempts, fakes.felloh.logins) == (attempts["felloh"] + 1, 2)  # one, shared

    assert fts.status_code == 503 and fts.json()["error"] == "token_unavailable", fts.text
    assert "503" in fts.json()["message"] and fts.json()["next_attempt"] is not None
    assert status_of(daemon, "fts")["state"] == "expired"
    # The missed renewal, then backoff with full jitter (at least 0.5 s apart) while Felloh's slow login runs.
    assert fakes.fintech_studios.logins == 1 and fakes.fintech_studios.login_attempts <= attempts["fts"] + 4

    fakes.fintech_studios.recover()
    eventually(lambda: daemon.get("/token/fts").status_code == 200, what="FinTech Studios to come back")
    assert works_upstream(fakes.fintech_studios_url, fakes.fintech_studios, daemon.get("/token/fts").json())
    assert fakes.fintech_studios.logins == 2 and fakes.fintech_studios.login_attempts <= attempts["fts"] + 7
