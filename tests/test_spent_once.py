"""A refresh token is spent once, whatever happens: the real daemon (a subprocess) against a fake authorization
server that rotates refresh tokens and revokes the whole family when a spent one comes back (`reuse_detected`).

Stops and reloads during a renewal, a full state folder, records put back, logout during a renewal, concurrent
sign-ins, hostile device answers; SIGTERM and SIGKILL at random points of renewals (SPENT_ONCE_RUNS runs,
10 by default: `SPENT_ONCE_RUNS=50 pytest tests/test_spent_once.py -k random` for the long run).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, tokend_command
from tests.test_user_tokens import KEY, refresh, secret_file, started, stop, token, user_config
from tokend.testing import FakeAuthorizationServer, FakeServer


@pytest.fixture
def fake() -> Iterator[tuple[FakeAuthorizationServer, str]]:
    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=3600)
    with FakeServer(server.app) as running:
        yield server, running.url


@pytest.fixture(autouse=True)
def no_daemon_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every daemon a test starts is killed at its end, even after a failed assertion: a daemon left running
    would go on writing into a state folder a later run reuses."""
    begun: list[Daemon] = []
    real = Daemon.start

    def start(self: Daemon, *, ready: bool = True) -> None:
        begun.append(self)
        real(self, ready=ready)

    monkeypatch.setattr(Daemon, "start", start)
    yield
    for daemon in begun:
        daemon.kill()


def status(daemon: Daemon) -> dict[str, object]:
    provider = daemon.get("/status").json()["providers"]["user"]
    assert isinstance(provider, dict)
    return provider


def in_background(call: object) -> concurrent.futures.Future[object]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(call)  # type: ignore[arg-type]
    pool.shutdown(wait=False)
    return future


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def quietly(call: object) -> object:
    with contextlib.suppress(Exception):
        return call()  # type: ignore[operator]
    return None


def asks_for_sign_in(daemon: Daemon) -> bool:
    return status(daemon)["sign_in_reason"] == "refresh_token_spent"


# --- 1. a stop during a renewal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [1.5, 4.0], ids=["answer-after-1.5s", "answer-after-the-graceful-3s"])
def test_a_stop_during_a_renewal_keeps_its_answer(tmp_path, fake, delay) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    config = user_config(tmp_path, url, refresh_token=server.sign_in())
    daemon = started(config)
    token(daemon)
    server.answer_delay = delay
    in_background(lambda: quietly(lambda: daemon.post("/token/user/refresh")))
    wait_for(lambda: server.refreshes == 2, "the renewal to spend the refresh token")
    began = time.monotonic()
    stop(daemon)  # exit 0: the stop waited for the answer, and kept it
    assert time.monotonic() - began >= delay - 1.0
    server.answer_delay = 0.0
    again = started(config)
    try:
        assert server.is_valid(token(again))
        assert server.logins == 2, "the restart restored the kept answer without a login"
        refresh(again)
        assert server.reuse_detected == 0 and len(server.live_refresh_tokens()) == 1
    finally:
        stop(again)
    assert "Traceback" not in daemon.log() and " ERROR " not in daemon.log()


def test_a_stop_during_a_scheduled_renewal_logs_no_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=4)
    with FakeServer(server.app) as running:
        config = user_config(tmp_path, running.url, refresh_token=server.sign_in())
        daemon = started(config)
        server.answer_delay = 1.5
        wait_for(lambda: server.refreshes == 2, "the scheduled renewal")
        stop(daemon)
        server.answer_delay = 0.0
        again = started(config)
        try:
            assert server.is_valid(token(again)) and server.reuse_detected == 0
        finally:
            stop(again)
    logs = daemon.log()
    assert "Traceback" not in logs and "CancelledError" not in logs and " ERROR " not in logs, logs


# --- 2. a reload that changes a timing setting during a login ---------------------------------------------------


def test_a_reload_during_a_login_never_cancels_it(tmp_path, fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    config = user_config(tmp_path, url, refresh_token=server.sign_in(), provider="timeout = 10")
    daemon = started(config)
    try:
        token(daemon)
        server.answer_delay = 1.5
        forced = in_background(lambda: daemon.post("/token/user/refresh"))
        wait_for(lambda: server.refreshes == 2, "the forced login to spend the refresh token")
        config.write_text(config.read_text().replace("timeout = 10", "timeout = 11"))
        reloaded = daemon.post("/reload")
        assert reloaded.status_code == 200 and reloaded.json()["changed"] == ["user"], reloaded.text
        answer = forced.result(timeout=30)
        assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
        server.answer_delay = 0.0
        daemon.wait_until(lambda: status(daemon)["state"] == "ok", what="the new slot to serve")
        assert server.is_valid(token(daemon)) and server.is_valid(refresh(daemon))
        assert server.reuse_detected == 0 and len(server.live_refresh_tokens()) == 1
    finally:
        stop(daemon)


def test_reloads_in_a_loop_during_renewals_spend_nothing_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=3)
    rng = random.Random(7)
    with FakeServer(server.app) as running:
        config = user_config(tmp_path, running.url, refresh_token=server.sign_in(), provider="timeout = 10")
        daemon = started(config)
        server.answer_delay = 0.3
        try:
            for index in range(20):
                config.write_text(config.read_text().replace(f"timeout = {10 + index % 2}",
                                                             f"timeout = {10 + (index + 1) % 2}"))
                assert daemon.post("/reload").status_code == 200
                time.sleep(rng.uniform(0.05, 0.4))
            daemon.wait_until(lambda: status(daemon)["state"] == "ok", what="a token after the reloads")
            assert server.reuse_detected == 0 and server.refreshes >= 3
            assert server.is_valid(token(daemon)) and len(server.live_refresh_tokens()) == 1
        finally:
            stop(daemon)


# --- 3. a full state folder ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up for real (ENOSPC), needing root to mount."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)],  # noqa: S607
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"cannot mount a tmpfs for the full-disk test: {mounted.stderr}")
        pytest.skip(f"tests/test_spent_once.py: cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)  # noqa: S607


def fill(folder: Path) -> Path:
    """Fill the file system holding `folder` to its last byte."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    return filler


def test_a_full_state_folder_leaves_nothing_a_restart_could_spend_again(tmp_path, fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    with small_tmpfs(tmp_path / "disk") as disk:
        config = user_config(tmp_path, url, refresh_token=server.sign_in())
        config.write_text(config.read_text().replace(f'path = "{tmp_path / "state"}"', f'path = "{disk / "state"}"'))
        daemon = started(config)
        try:
            token(daemon)
            refresh(daemon)  # the state folder holds a rotated refresh token
            filler = fill(disk)
            served = refresh(daemon)  # rotated again, and nothing can be written
            assert server.is_valid(served)
            daemon.wait_until(lambda: "state_write_failed provider=" in daemon.log()
                              or "state_ledger_unwritable provider=" in daemon.log(), what="the failed write's warning")
        finally:
            daemon.kill()  # a crash while the disk is full: no stop to write anything
        filler.unlink()  # the space returns
        again = started(config, ready=False)
        try:
            with contextlib.suppress(Exception):
                again.post("/token/user/refresh")
            again.wait_until(lambda: asks_for_sign_in(again), what="the sign-in the spent refresh token needs")
            assert server.reuse_detected == 0 and server.refreshes == 3
            shown = subprocess.run(tokend_command("status", "--url", again.url), capture_output=True, text=True,
                                   timeout=60)
            assert "may already have been spent): run `tokend login user` or put a new refresh_token in the config" \
                in shown.stdout, shown.stdout
        finally:
            stop(again)


# --- 4. records put back ------------------------------------------------------------------------------------------


def test_a_record_put_back_and_the_configured_token_after_logout_are_never_sent(tmp_path, fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    config = user_config(tmp_path, url, refresh_token=server.sign_in())
    record = tmp_path / "state" / "user.record"
    daemon = started(config)
    token(daemon)
    backup = record.read_text()  # a backup taken now
    refresh(daemon)
    refresh(daemon)
    stop(daemon)
    record.write_text(backup)  # ... and restored
    again = started(config)
    try:
        served = token(again)  # its access token still serves, until it expires
        assert again.post("/token/user/refresh").status_code >= 400
        assert asks_for_sign_in(again) and server.reuse_detected == 0 and server.refreshes == 3
        assert token(again) == served
        assert "sign_in_reason" in status(again) and "generation" not in again.get("/status").text
    finally:
        stop(again)

    # The record was dropped with its spent refresh token; the configured first one was spent long ago too.
    daemon = started(config, ready=False)
    daemon.wait_until(lambda: asks_for_sign_in(daemon), what="the sign-in the spent configured token needs")
    assert daemon.post("/token/user/login").status_code == 200
    server.approve()
    daemon.wait_until(lambda: status(daemon)["state"] == "ok", what="the device sign-in")
    refresh(daemon)  # a rotation in the new sign-in's line
    # Signed out (the record forgotten): after a restart only the configured (spent) refresh token is left.
    out = subprocess.run(tokend_command("logout", "user", "--url", daemon.url), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    stop(daemon)
    daemon = started(config, ready=False)
    try:
        daemon.wait_until(lambda: asks_for_sign_in(daemon), what="the sign-in the spent configured token needs")
        assert server.reuse_detected == 0 and server.refreshes == 4
    finally:
        stop(daemon)

    # Another state key: what the ledger noted cannot be read, so the configured token counts as spent.
    other = user_config(tmp_path, url, refresh_token=None, key=__import__("base64").b64encode(os.urandom(32)).decode())
    shutil.copy(tmp_path / "refresh_token", tmp_path / "refresh_token.kept")
    other.write_text(other.read_text().replace("[providers.user]", "[providers.user]\n"
                                               f'refresh_token = {{ file = "{tmp_path / "refresh_token.kept"}" }}'))
    daemon = started(other, ready=False)
    try:
        daemon.wait_until(lambda: asks_for_sign_in(daemon), what="the sign-in after a change of state key")
        assert server.reuse_detected == 0 and server.refreshes == 4
    finally:
        stop(daemon)


# --- 7, 8. logout during a renewal; sign-ins at once --------------------------------------------------------------


def test_logout_during_a_renewal_revokes_the_newest_refresh_token(tmp_path, fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    daemon = started(user_config(tmp_path, url, refresh_token=server.sign_in()))
    try:
        token(daemon)
        server.answer_delay = 1.5
        in_background(lambda: quietly(lambda: daemon.post("/token/user/refresh")))
        wait_for(lambda: server.refreshes == 2, "the renewal to spend the refresh token")
        answer = daemon.post("/token/user/logout")
        assert answer.status_code == 200 and answer.json()["revoked"], answer.text
        assert server.revoked == [server.newest_refresh_token()]
        assert server.live_refresh_tokens() == set() and server.reuse_detected == 0
        assert daemon.get("/token/user").status_code == 503
        assert status(daemon)["sign_in_reason"] == "signed_out"
    finally:
        stop(daemon)


def test_sign_ins_at_once_join_one_and_logout_ends_it(tmp_path, fake) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    daemon = started(user_config(tmp_path, url, refresh_token=None), ready=False)
    try:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: daemon.post("/token/user/login"), range(5)))
        assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
        assert len({answer.json()["user_code"] for answer in answers}) == 1
        assert len(server.pending_user_codes()) == 1
        assert daemon.post("/token/user/logout").status_code == 200
        assert daemon.get("/token/user/login").status_code == 404
        polls = server.device_polls
        server.approve()
        time.sleep(2.5)  # two intervals: a poller left behind would have polled and signed the user in
        assert server.device_polls == polls and daemon.get("/token/user").status_code == 503
    finally:
        stop(daemon)


# --- 9. device answers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [{"expires_in": 1e300}, {"expires_in": "inf"}, {"interval": 1e300}])
def test_a_device_answer_out_of_bounds_is_clamped(tmp_path, fake, answer) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    server.device_answer = answer
    daemon = started(user_config(tmp_path, url, refresh_token=None), ready=False)
    try:
        begun = daemon.post("/token/user/login")
        assert begun.status_code == 200, begun.text
        assert 1 <= begun.json()["interval"] <= 60
        assert daemon.get("/token/user/login").status_code == 200
    finally:
        stop(daemon)


@pytest.mark.parametrize("answer", [{"verification_uri": "javascript:alert(1)"},
                                    {"verification_uri": "http://evil.example/activate"},
                                    {"user_code": "AB\x1b[2JCD"}, {"user_code": "X" * 65}])
def test_a_device_answer_that_could_mislead_the_user_is_refused(tmp_path, fake, answer) -> None:  # type: ignore[no-untyped-def]
    server, url = fake
    server.device_answer = answer
    daemon = started(user_config(tmp_path, url, refresh_token=None), ready=False)
    try:
        begun = daemon.post("/token/user/login")
        assert begun.status_code == 502, begun.text
        assert "\x1b" not in begun.text and "evil.example" not in begun.text
    finally:
        stop(daemon)


# --- SIGTERM and SIGKILL at random points of renewals -----------------------------------------------------------


def test_stops_and_kills_at_random_points_of_renewals_never_reuse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runs = int(os.environ.get("SPENT_ONCE_RUNS", "10"))
    rng = random.Random(int(os.environ.get("SPENT_ONCE_SEED", "30")))
    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=3)
    killed = sign_ins = 0
    with FakeServer(server.app) as running:
        config = user_config(tmp_path, running.url, refresh_token=server.sign_in())
        for _ in range(runs):
            server.answer_delay = 0.0
            daemon = started(config, ready=False)
            daemon.wait_until(lambda: status(daemon)["state"] == "ok" or status(daemon)["sign_in_reason"],  # noqa: B023
                              what="a token or a sign-in asked for")
            if status(daemon)["sign_in_reason"] is not None:
                # The last kill came between noting the refresh token and keeping the answer: the daemon asks
                # for a sign-in rather than guess. A person signs in again (a new refresh token, no record).
                assert status(daemon)["sign_in_reason"] == "refresh_token_spent"
                sign_ins += 1
                daemon.kill()
                daemon.client.close()
                (tmp_path / "refresh_token").write_text(server.sign_in() + "\n")
                (tmp_path / "state" / "user.record").unlink(missing_ok=True)
                continue
            server.answer_delay = rng.uniform(0.0, 0.8)
            in_background(lambda: quietly(lambda: daemon.post("/token/user/refresh")))  # noqa: B023
            time.sleep(rng.uniform(0.0, 2.5))
            assert daemon.process is not None
            kill = rng.random() < 0.5
            daemon.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            killed += kill
            assert daemon.process.wait(timeout=30) in (0, -signal.SIGKILL), daemon.log()
            daemon.client.close()
            assert server.reuse_detected == 0, daemon.log()
    assert server.reuse_detected == 0 and server.refreshes >= runs // 2
    assert sign_ins <= killed  # only a kill (never a stop) can leave a refresh token whose fate is unknown
    print(f"runs={runs} killed={killed} sign_ins={sign_ins} refreshes={server.refreshes} reuse=0")


# --- 5. fleet: Redis stopped across renewals ---------------------------------------------------------------------


def fleet_table(directory: Path, redis_url: str, *, timeout: float = 0.5) -> str:
    """A [fleet] table sharing user tokens through `redis_url` (or, given as `sentinels = [...]` lines, the
    primary the sentinels name), its key in a file under `directory`."""
    key = secret_file(directory, "fleet_key", KEY)
    where = redis_url if redis_url.startswith("sentinels") else f'redis_url = "{redis_url}"\n'
    return (f'[fleet]\n{where}namespace = "users"\nlease = 2\ntimeout = {timeout}\n'
            f'retry_after = 1\nencryption_key = {{ file = "{key}" }}\n')


def fleet_daemons(directory: Path, redis_url: str, url: str, first: str, count: int, *,
                  timeout: float = 0.5) -> list[Daemon]:
    """`count` daemons of one fleet, each started with the same first refresh token."""
    return [started(user_config(directory / f"daemon-{index}", url, refresh_token=first,
                                extra=fleet_table(directory, redis_url, timeout=timeout)))
            for index in range(count)]


def test_redis_stopped_across_renewals_leaves_one_spender(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_redis import RedisServer

    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=4)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with FakeServer(server.app) as running:
            first = server.sign_in()
            daemons = fleet_daemons(tmp_path, redis.url, running.url, first, 3)
            assert all(server.is_valid(token(daemon)) for daemon in daemons)
            # Stopped once every daemon has seen the fleet's newest rotation: a rotation Redis loses before a
            # peer reads it (a write lost to a failover) is the case the fleet cannot tell apart.
            daemons[0].wait_until(lambda: len({token(daemon) for daemon in daemons}) == 1,
                                  what="the three daemons to serve the fleet's one token")
            redis.kill()  # across the next renewals
            time.sleep(8)  # two lifetimes: every daemon's token has needed renewing
            assert server.reuse_detected == 0, [daemon.log() for daemon in daemons]
            served = [daemon.get("/token/user") for daemon in daemons]
            assert sum(answer.status_code == 200 for answer in served) >= 1  # the daemon that rotated last
            for answer in served:  # the others: their access token has expired, and they do not spend
                assert answer.status_code == 200 or (
                    answer.status_code == 503 and answer.json()["error"] == "fleet_unavailable"
                    and int(answer.headers["retry-after"]) >= 1), answer.text
            assert any(answer.status_code == 503 for answer in served)
            redis.start()  # back, empty: the rotator writes its record, the others adopt it
            for daemon in daemons:
                daemon.wait_until(lambda d=daemon: d.get("/token/user").status_code == 200, timeout=40,
                                  what="the fleet's token after Redis returned")
            assert server.reuse_detected == 0 and len(server.live_refresh_tokens()) == 1
            for daemon in daemons:
                stop(daemon)
    finally:
        redis.kill()


def test_a_rolled_back_fleet_record_is_never_sent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_redis import RedisServer

    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=4)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with FakeServer(server.app) as running:
            first = server.sign_in()
            daemons = fleet_daemons(tmp_path, redis.url, running.url, first, 2)
            client = redis.client()
            (name,) = [k for k in client.keys("tokend:users:*") if str(k).endswith(":token")]
            old = client.get(name)
            refreshes = server.refreshes
            daemons[0].wait_until(lambda: server.refreshes >= refreshes + 2, timeout=30, what="two rotations")
            client.set(name, old)  # an old record put back (a backup restored)
            time.sleep(6)  # more than a lifetime: renewals meet the old record
            assert server.reuse_detected == 0, [daemon.log() for daemon in daemons]
            for daemon in daemons:
                stop(daemon)
    finally:
        redis.kill()


def renewed(daemon: Daemon) -> bool:
    answer = daemon.post("/token/user/refresh")
    return answer.status_code == 200 and answer.headers["x-tokend-new-login"] == "yes"


def test_a_daemon_another_rotated_past_never_spends_its_own_on_an_empty_redis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_redis import RedisServer

    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=60)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with FakeServer(server.app) as running:
            first = server.sign_in()
            rotated, passed = fleet_daemons(tmp_path, redis.url, running.url, first, 2)
            refresh(passed)  # its own login: it rotated the fleet's token
            rotated_token = refresh(rotated)  # then the other rotated past it, spending what `passed` still holds
            time.sleep(1)  # the other's record reaches `passed` on the channel (Redis on loopback: at once)
            redis.kill()
            redis.start()  # back, empty: only the daemon that rotated last may spend
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                quietly(lambda: passed.post("/token/user/refresh"))
                assert server.reuse_detected == 0, passed.log()
            assert server.is_valid(rotated_token) and server.reuse_detected == 0
            # The spender rotates and writes the fleet's record; the other continues from it (a 429 answers a
            # forced refresh while the Retry-After of the other's held-off attempts lasts).
            rotated.wait_until(lambda: renewed(rotated), timeout=30, what="the spender's rotation")
            passed.wait_until(lambda: renewed(passed), timeout=30, what="the other's rotation from the record")
            assert server.reuse_detected == 0 and len(server.live_refresh_tokens()) == 1
            for daemon in (rotated, passed):
                stop(daemon)
    finally:
        redis.kill()


def test_user_tokens_rotated_through_sentinel_failovers_are_spent_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Three daemons share a user token through the primary Sentinel names, renewing every few seconds, while
    the primary is handed over and then the new one killed: each rotation is the fleet's one, whatever
    primary held the intent and the record when it was written."""
    from tests.fleet_redis import SentinelSet

    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=3)
    sentinels = SentinelSet(tmp_path / "sentinel").start()
    where = (f"sentinels = {sentinels.addresses!r}\nsentinel_service = \"{sentinels.SERVICE}\"\n"
             "failover_timeout = 8\n").replace("'", '"')
    try:
        with FakeServer(server.app) as running:
            daemons = fleet_daemons(tmp_path, where, running.url, server.sign_in(), 3)

            def rotations(more: int) -> None:
                at_least = server.refreshes + more
                daemons[0].wait_until(lambda: server.refreshes >= at_least, timeout=40,
                                      what=f"{more} more rotations")

            rotations(2)
            sentinels.failover()  # the coordinated hand-over: the replica has everything
            rotations(2)
            sentinels.kill_primary()  # then the new primary dies with what it had not yet sent its replica
            rotations(3)
            assert server.reuse_detected == 0, [daemon.log() for daemon in daemons]
            assert len(server.live_refresh_tokens()) == 1
            for daemon in daemons:  # each serves the fleet's token again, through the primary now named
                daemon.wait_until(lambda d=daemon: d.get("/token/user").status_code == 200, timeout=30,
                                  what="the fleet's token after the failovers")
                assert "Traceback" not in daemon.log()
            for daemon in daemons:
                stop(daemon)
    finally:
        sentinels.kill()


# --- 6. fleet: a lagging replica promoted ------------------------------------------------------------------------


def test_a_lagging_replica_promoted_never_hands_out_a_spent_refresh_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_redis import RedisServer

    server = FakeAuthorizationServer(client_secret="user-app-secret-123", lifetime=60)
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica", args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    promoted: RedisServer | None = None
    try:
        wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", "the replica's link")
        with FakeServer(server.app) as running:
            first = server.sign_in()
            spender, lagging = fleet_daemons(tmp_path, primary.url, running.url, first, 2, timeout=1)
            spender.wait_until(lambda: token(spender) == token(lagging), what="the fleet's one token")
            refresh(spender)
            refresh(lagging)  # it continues from the spender's record: both have rotated the fleet's token
            # The next rotation: once its intent is acknowledged by the replica and the refresh token sent, the
            # replica's data as it stands is what a failover now promotes (saved: a stopped replica would still
            # read what the primary sent it), so the rotated record lives on the primary alone.
            refreshes = server.refreshes
            server.answer_delay = 1.5

            def rotate() -> None:  # a forced refresh may first adopt the other's rotation: then it rotates next
                while server.refreshes == refreshes:
                    refresh(spender)

            rotation = in_background(rotate)
            wait_for(lambda: server.refreshes > refreshes or rotation.done(), "the rotation at the server")
            assert not rotation.done(), rotation.exception()  # sent only once its intent was acknowledged
            replica.client().save()
            rotation.result(timeout=30)
            server.answer_delay = 0.0
            # The primary is lost; the lagging replica is promoted and takes its address.
            primary.kill()
            replica.kill()
            promoted = RedisServer(tmp_path / "replica")
            promoted.port, promoted.url = primary.port, primary.url
            promoted.start()
            assert promoted.client().keys("tokend:users:*:intent")
            # The daemon that never read the newest record, and one started afresh, meet the old record.
            quietly(lambda: lagging.post("/token/user/refresh"))
            late = started(user_config(tmp_path / "daemon-late", running.url, refresh_token=first,
                                       extra=fleet_table(tmp_path, primary.url, timeout=1)))
            quietly(lambda: late.post("/token/user/refresh"))
            assert server.reuse_detected == 0, [daemon.log() for daemon in (spender, lagging, late)]
            for daemon in (lagging, late):  # told not to spend it: a sign-in is asked for, the token still served
                daemon.wait_until(lambda d=daemon: asks_for_sign_in(d), what="a sign-in asked for")
                assert daemon.get("/token/user").status_code == 200
            # The spender continues from its own rotation; the others then follow it.
            spender.wait_until(lambda: renewed(spender), timeout=30, what="the spender's rotation")
            assert server.reuse_detected == 0 and len(server.live_refresh_tokens()) == 1
            for daemon in (spender, lagging, late):
                stop(daemon)
    finally:
        for redis in (primary, replica, promoted):
            if redis is not None:
                redis.kill()
