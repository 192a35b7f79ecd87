"""User tokens end to end: the real daemon (a subprocess) against a fake authorization server that rotates
refresh tokens and revokes a whole family when a spent one comes back; the state folder across restarts;
the device sign-in and the sign-out through the command line; a fleet of daemons on a real redis-server.

The fake counts what matters: access tokens issued (logins), refresh tokens presented twice (reuse).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, free_port, tokend_command
from tokend.testing import FakeAuthorizationServer, FakeServer

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def server() -> Iterator[tuple[FakeAuthorizationServer, str]]:
    fake = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=3600)
    with FakeServer(fake.app) as running:
        yield fake, running.url


def secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return path


def user_config(directory: Path, url: str, *, refresh_token: str | None, key: str = KEY, state: bool = True,
                provider: str = "", extra: str = "", port: int | None = None, name: str = "user",
                min_refresh_interval: float = 0.01) -> Path:
    """A config with one oauth2_refresh_token provider named `name` and (by default) a [state] folder."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", 'host = "127.0.0.1"', f"port = {port or free_port()}", ""]
    if state:
        lines += ["[state]", f'path = "{directory / "state"}"',
                  f'encryption_key = {{ file = "{secret_file(directory, "state_key", key)}" }}', ""]
    lines += [f"[providers.{name}]", 'kind = "oauth2_refresh_token"', f'token_url = "{url}/oauth/token"',
              'client_id = "demo-user-app"',
              f'client_secret = {{ file = "{secret_file(directory, "client_secret", "user-app-secret-123")}" }}',
              f'device_authorization_url = "{url}/oauth/device"', f'revocation_url = "{url}/oauth/revoke"',
              'scope = "openid offline_access"', f"min_refresh_interval = {min_refresh_interval}"]
    if refresh_token is not None:
        lines.append(f'refresh_token = {{ file = "{secret_file(directory, "refresh_token", refresh_token)}" }}')
    config = directory / "tokend.toml"
    config.write_text("\n".join([*lines, provider, "", extra]) + "\n")
    return config


def started(config: Path, *, ready: bool = True) -> Daemon:
    daemon = Daemon(config, log_path=config.parent / f"daemon-{time.monotonic_ns()}.log")
    daemon.start(ready=ready)
    return daemon


def stop(daemon: Daemon) -> None:
    code, _ = daemon.terminate()
    daemon.client.close()
    assert code == 0, daemon.log()


def token(daemon: Daemon, name: str = "user") -> str:
    answer = daemon.get(f"/token/{name}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def refresh(daemon: Daemon, name: str = "user") -> str:
    """A forced refresh that logs in (one rotation). A refresh within min_refresh_interval of the last login
    is answered with the token held, as it should be (a fast machine sends the next one that soon): asked
    again until the answer says it came from a new login."""
    answers: list[httpx.Response] = []

    def logged_in() -> bool:
        answers.append(answer := daemon.post(f"/token/{name}/refresh"))
        assert answer.status_code == 200, answer.text
        return answer.headers["x-tokend-new-login"] == "yes"

    daemon.wait_until(logged_in, what=f"a forced refresh of {name} that logs in")
    return str(answers[-1].json()["token"])


def test_rotated_refresh_tokens_survive_restarts_and_a_restart_makes_no_login(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    first = fake.sign_in()
    config = user_config(tmp_path, url, refresh_token=first)
    daemon = started(config)
    try:
        served = token(daemon)
        assert fake.is_valid(served) and fake.logins == 1
        for _ in range(3):  # three rotations: the configured refresh token is long spent
            served = refresh(daemon)
        assert fake.logins == 4
        folder = tmp_path / "state"
        record = folder / "user.record"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(record.stat().st_mode) == 0o600
        sealed = record.read_text()
        for secret in (served, first, *fake.refresh_tokens_issued(), "user-app-secret-123", KEY):
            assert secret not in sealed
    finally:
        stop(daemon)

    again = started(config)
    try:
        assert token(again) == served  # the same token, and no login for it
        assert fake.logins == 4
        assert "restored provider=user" in again.log()
        # The next login spends the latest rotated refresh token, not the configured (spent) one.
        renewed = refresh(again)
        assert renewed != served and fake.is_valid(renewed) and fake.logins == 5
    finally:
        stop(again)
    assert fake.reuse_detected == 0
    assert len(fake.live_refresh_tokens()) == 1
    logs = daemon.log() + again.log()
    assert not [secret for secret in (*fake.refresh_tokens_issued(), *fake.issued) if secret in logs]


def test_a_storm_of_forced_refreshes_never_spends_a_refresh_token_twice(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    daemon = started(user_config(tmp_path, url, refresh_token=fake.sign_in()))
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: daemon.post("/token/user/refresh"), range(200)))
        assert all(answer.status_code == 200 for answer in answers), {a.status_code for a in answers}
        assert fake.reuse_detected == 0
        assert fake.refreshes == fake.logins and fake.logins >= 2
        assert fake.is_valid(token(daemon)) and len(fake.live_refresh_tokens()) == 1
    finally:
        stop(daemon)


def test_a_refused_refresh_token_says_the_user_must_sign_in_and_how(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    daemon = started(user_config(tmp_path, url, refresh_token="not-a-token-this-server-issued"), ready=False)
    try:
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["user"]["sign_in"] is not None,
                          what="the sign-in hint")
        status = daemon.get("/status").json()["providers"]["user"]
        assert status["sign_in"] == "tokend login user" and status["state"] == "failed"
        assert "tokend login user" in status["last_error"]["message"]
        assert "not-a-token-this-server-issued" not in daemon.get("/status").text
        shown = subprocess.run(tokend_command("status", "--url", daemon.url), capture_output=True, text=True,
                               timeout=60)
        assert "sign-in needed: run `tokend login user`" in shown.stdout, shown.stdout + shown.stderr
        assert shown.returncode == 5
        assert daemon.get("/token/user").status_code == 503
        assert "not-a-token-this-server-issued" not in daemon.log()
        assert fake.login_attempts == 1  # refused credentials are retried slowly, not in a loop
    finally:
        stop(daemon)


def test_tokend_login_signs_in_through_the_daemon_and_logout_revokes(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    config = user_config(tmp_path, url, refresh_token=None)
    daemon = started(config)  # waiting for the first sign-in is no failure: ready at once
    try:
        # Before any sign-in: a state of its own, not a refused login (no request was made), and ready.
        status = daemon.get("/status").json()
        assert status["ready"] is True and status["providers"]["user"]["state"] == "sign_in", status
        assert (status["providers"]["user"]["sign_in"], status["providers"]["user"]["sign_in_reason"]) == (
            "tokend login user", "never_signed_in")
        assert status["providers"]["user"]["logins"] == {"ok": 0, "failed": 0}
        ready = daemon.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "providers": {"user": "sign_in"}})
        assert daemon.get("/token/user").status_code == 503
        assert fake.login_attempts == 0
        assert "login provider=user" not in daemon.log(), daemon.log()
        assert daemon.log().count("sign_in_needed provider=user reason=never_signed_in") == 1, daemon.log()
        shown = subprocess.run(tokend_command("status", "--url", daemon.url), capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and "sign-in needed: run `tokend login user`" in shown.stdout, shown.stdout

        login = subprocess.Popen(tokend_command("login", "user", "--url", daemon.url), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        daemon.wait_until(lambda: fake.pending_user_codes() != [], what="a device sign-in to start")
        (user_code,) = fake.pending_user_codes()
        time.sleep(1.5)  # a poll or two answered authorization_pending
        fake.approve(user_code)
        out, err = login.communicate(timeout=60)
        assert login.returncode == 0, out + err
        assert f"{url}/activate" in out and user_code in out and f"user_code={user_code}" in out
        assert "user is signed in" in out
        served = token(daemon)
        assert fake.is_valid(served) and fake.reuse_detected == 0
        assert daemon.get("/status").json()["providers"]["user"]["state"] == "ok"
        assert (tmp_path / "state" / "user.record").exists()

        # The device code is never shown; what the daemon polled with stays inside it.
        progress = daemon.get("/token/user/login").json()
        assert progress["state"] == "signed_in" and "device_code" not in progress

        out = subprocess.run(tokend_command("logout", "user", "--url", daemon.url), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        assert fake.revocations == 1 and fake.live_refresh_tokens() == set() and not fake.is_valid(served)
        assert daemon.get("/token/user").status_code == 503
        assert daemon.get("/status").json()["providers"]["user"]["sign_in"] == "tokend login user"
        assert daemon.get("/status").json()["providers"]["user"]["state"] == "sign_in"
        assert not (tmp_path / "state" / "user.record").exists()
    finally:
        stop(daemon)


def test_the_sign_in_slows_down_when_asked_and_stops_with_a_sentence_when_refused(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    daemon = started(user_config(tmp_path, url, refresh_token=None), ready=False)
    try:
        fake.slow_down(1)
        begun = daemon.post("/token/user/login")
        assert begun.status_code == 200 and begun.json()["interval"] == 1
        # A second `tokend login` watches the sign-in under way rather than starting another.
        assert daemon.post("/token/user/login").json()["user_code"] == begun.json()["user_code"]
        daemon.wait_until(lambda: daemon.get("/token/user/login").json()["interval"] == 6, timeout=30,
                          what="the interval to grow by five seconds")
        fake.deny()
        daemon.wait_until(lambda: daemon.get("/token/user/login").json()["state"] == "denied", timeout=30,
                          what="the refusal")
        assert daemon.get("/token/user/login").json()["message"] == "the user refused the sign-in"
        assert fake.device_polls <= 4  # 1 s, then 6 s between polls: no polling faster than asked

        # A code that expires before the approval: `tokend login` stops with a sentence and exit 5.
        login = subprocess.Popen(tokend_command("login", "user", "--url", daemon.url), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        daemon.wait_until(lambda: fake.pending_user_codes() != [], what="a second sign-in")
        fake.expire(fake.pending_user_codes()[0])
        out, err = login.communicate(timeout=60)
        assert login.returncode == 5, out + err
        assert "the sign-in expired: the code expired before the user approved it; run `tokend login user` " \
            "again" in err
    finally:
        stop(daemon)


def test_a_record_that_does_not_open_is_ignored_and_never_served(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAuthorizationServer(client_secret="user-app-secret-123", rotate=False)
    with FakeServer(fake.app) as running:
        first = fake.sign_in()
        config = user_config(tmp_path, running.url, refresh_token=first)
        daemon = started(config)
        served = token(daemon)
        stop(daemon)
        assert fake.logins == 1

        # Another key: the record does not open (logged once), nor does the ledger of refresh tokens sent, so
        # the configured one may have been spent: a sign-in is asked for. Once the ledger is removed (by
        # someone who knows), a fresh login is made.
        other_key = base64.b64encode(os.urandom(32)).decode()
        other = user_config(tmp_path, running.url, refresh_token=first, key=other_key)
        daemon = started(other, ready=False)
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["user"]["sign_in_reason"]
                          == "refresh_token_spent", what="the sign-in a ledger under another key asks for")
        assert fake.logins == 1 and daemon.log().count("does not open") == 1
        stop(daemon)
        (tmp_path / "state" / "user.spent").unlink()
        daemon = started(other)
        assert token(daemon) != served and fake.logins == 2
        stop(daemon)

        # Another provider's record copied over this one's does not open either.
        (tmp_path / "state" / "other.record").write_text((tmp_path / "state" / "user.record").read_text())
        renamed = user_config(tmp_path, running.url, refresh_token=first, name="other")
        daemon = started(renamed)
        assert "does not open" in daemon.log() and fake.logins == 3
        stop(daemon)

        # Changed login settings (another scope) never serve the old settings' token.
        changed = user_config(tmp_path, running.url, refresh_token=first, key=other_key,
                              provider='extra = { audience = "another-api" }')
        daemon = started(changed)
        assert fake.logins == 4 and "does not open" in daemon.log()
        stop(daemon)


def test_persist_false_keeps_nothing(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    config = user_config(tmp_path, url, refresh_token=fake.sign_in(), provider="persist = false")
    daemon = started(config)
    try:
        token(daemon)
        assert list((tmp_path / "state").glob("*.record")) == []
    finally:
        stop(daemon)


def test_the_sign_in_routes_take_the_same_request_checks(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    daemon = started(user_config(tmp_path, url, refresh_token=fake.sign_in()))
    try:
        for method, path in (("POST", "/token/user/login"), ("GET", "/token/user/login"),
                             ("POST", "/token/user/logout")):
            answer = daemon.client.request(method, path, headers={"X-Tokend-Request": ""})
            assert answer.status_code == 403, (method, path, answer.text)
            answer = daemon.client.request(method, path, headers={"Host": "evil.example"})
            assert answer.status_code == 403, (method, path, answer.text)
        assert fake.revocations == 0 and fake.pending_user_codes() == []
    finally:
        stop(daemon)


def test_a_fleet_shares_one_refresh_token_under_the_lease_and_never_spends_one_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_redis import RedisServer

    fake = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=4)
    redis = RedisServer(tmp_path / "redis").start()
    daemons: list[Daemon] = []
    try:
        with FakeServer(fake.app) as running:
            first = fake.sign_in()
            for index in range(3):
                directory = tmp_path / f"daemon-{index}"
                fleet = (f'[fleet]\nredis_url = "{redis.url}"\nnamespace = "users"\nlease = 2\ntimeout = 0.5\n'
                         f'encryption_key = {{ file = "{secret_file(directory.parent, "fleet_key", KEY)}" }}\n')
                config = user_config(directory, running.url, refresh_token=first, extra=fleet,
                                     min_refresh_interval=1)
                daemons.append(started(config))
            started_at = time.monotonic()
            assert all(fake.is_valid(token(daemon)) for daemon in daemons)

            def storm(daemon: Daemon) -> list[int]:
                return [daemon.post("/token/user/refresh").status_code for _ in range(10)]

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                codes = [code for codes in pool.map(storm, daemons * 2) for code in codes]
            assert set(codes) == {200}
            # Renewals every few seconds on three daemons, one of them restarted meanwhile.
            stop(daemons[1])
            time.sleep(5)
            daemons[1] = started(daemons[1].config)
            time.sleep(5)
            for daemon in daemons:
                assert fake.is_valid(token(daemon)), daemon.log()
            assert fake.reuse_detected == 0, [daemon.log() for daemon in daemons]
            # The fleet renews together: about one login per two thirds of a lifetime, plus the forced ones
            # (at most one per min_refresh_interval fleet-wide), never one per daemon.
            elapsed = time.monotonic() - started_at
            assert fake.logins <= 3 + elapsed / 2 + elapsed / 1, (fake.logins, elapsed)
            assert len(fake.live_refresh_tokens()) == 1
            sealed = "".join(redis.everything().values())
            for secret in (first, *fake.refresh_tokens_issued(), *fake.issued):
                assert secret not in sealed
    finally:
        for daemon in daemons:
            daemon.kill()
        redis.kill()


def test_a_reload_that_leaves_the_login_alone_keeps_the_rotated_refresh_token_without_state(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    fake, url = server
    config = user_config(tmp_path, url, refresh_token=fake.sign_in(), state=False)
    daemon = started(config)
    try:
        refresh(daemon)  # rotated: the configured refresh token is spent
        config.write_text(config.read_text().replace("min_refresh_interval = 0.01", "min_refresh_interval = 0.02"))
        reloaded = daemon.post("/reload")
        assert reloaded.status_code == 200 and reloaded.json()["changed"] == ["user"], reloaded.text
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["user"]["logins"]["ok"] == 1,
                          what="the changed provider's first login")
        assert fake.is_valid(token(daemon)) and fake.reuse_detected == 0

        # A change of the login itself (another scope) never hands the held refresh token over, and the
        # configured one, spent at the first login, is not sent again: the user is asked to sign in.
        config.write_text(config.read_text().replace('scope = "openid offline_access"', 'scope = "openid"'))
        refreshes = fake.refreshes
        assert daemon.post("/reload").json()["changed"] == ["user"]
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["user"]["last_error"] is not None,
                          what="the changed provider's refusal to send a spent refresh token")
        status = daemon.get("/status").json()["providers"]["user"]
        assert status["sign_in_reason"] == "refresh_token_spent" and status["sign_in"] == "tokend login user"
        assert fake.refreshes == refreshes and fake.reuse_detected == 0
    finally:
        stop(daemon)
