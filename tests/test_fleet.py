"""Fleet mode end to end: real redis-server processes, real daemons, the fake providers.

Each test starts its own Redis on a free port and its own daemons; the fakes count every login, which is
what the fleet exists to save.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon import Daemon, free_port, tokend_command
from tests.fleet_redis import RedisServer
from tokend.config.settings import Settings
from tokend.fleet.envelope import FleetKey
from tokend.testing import FakeProviders, serve_fakes, write_fake_config

KEY = base64.b64encode(os.urandom(32)).decode()
OTHER_KEY = base64.b64encode(os.urandom(32)).decode()
LIFETIME = 6.0  # seconds: short, so that a test sees several renewals


def fleet_table(redis_url: str, key_file: Path, *, extra: str = "", retry_after: float = 1,
                where: str | None = None) -> str:
    """`where`: the TOML lines that say where Redis is (sentinels, cluster_nodes), instead of `redis_url`."""
    where = where if where is not None else f'redis_url = "{redis_url}"\n'
    return (f'[fleet]\n{where}encryption_key = {{ file = "{key_file}" }}\n'
            f'namespace = "test"\ntimeout = 0.3\nlease = 1.5\nretry_after = {retry_after}\n{extra}')


class Fleet:
    """Daemons that share `redis`, each with its own directory, port and log."""

    def __init__(self, tmp_path: Path, fakes: FakeProviders, redis: RedisServer) -> None:
        self.tmp_path, self.fakes, self.redis = tmp_path, fakes, redis
        self.daemons: list[Daemon] = []

    def add(self, *, key: str = KEY, old_keys: tuple[str, ...] = (), fleet_extra: str = "",
            redis_url: str | None = None, retry_after: float = 1, where: str | None = None,
            adjust: Callable[[Path], None] | None = None, **options: object) -> Daemon:
        directory = self.tmp_path / f"daemon-{len(self.daemons)}"
        directory.mkdir()
        key_file = directory / "fleet_key"
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
        old_files = []
        for index, old in enumerate(old_keys):
            old_files.append(old_file := directory / f"old_key_{index}")
            old_file.touch(mode=0o600)
            old_file.write_text(old + "\n")
        if old_files:
            fleet_extra += "old_encryption_keys = [" + ", ".join(f'{{ file = "{f}" }}' for f in old_files) + "]\n"
        extra = fleet_table(redis_url or self.redis.url, key_file, extra=fleet_extra, retry_after=retry_after,
                            where=where)
        config = write_fake_config(directory, self.fakes, free_port(), extra=extra, **options)
        if adjust is not None:
            adjust(directory)
        daemon = Daemon(config, log_path=directory / "daemon.log")
        self.daemons.append(daemon)
        return daemon

    def start(self, daemons: list[Daemon] | None = None, *, ready: bool = True) -> None:
        """Start them all at once (as a rolling deploy or a fleet's boot does), then wait for each."""
        daemons = self.daemons if daemons is None else daemons
        for daemon in daemons:
            with daemon.log_path.open("wb") as log:
                daemon.process = subprocess.Popen(
                    tokend_command("--config", str(daemon.config), "run"), stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
        for daemon in daemons:
            daemon.wait_listening()
            if ready:
                daemon.wait_until(lambda d=daemon: d.get("/readyz").status_code == 200, what="ready")

    def tokens(self, provider: str) -> list[str]:
        return [daemon.get(f"/token/{provider}").json()["token"] for daemon in self.daemons if alive(daemon)]

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


def alive(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def short_fakes() -> Iterator[FakeProviders]:
    with serve_fakes(lifetime=LIFETIME) as providers:
        yield providers


@pytest.fixture
def fleet(tmp_path: Path, short_fakes: FakeProviders, redis_server: RedisServer) -> Iterator[Fleet]:
    group = Fleet(tmp_path, short_fakes, redis_server)
    yield group
    group.stop()


class Poller:
    """GET every provider of every daemon in a loop from a thread, noting every answer that is not a 200."""

    def __init__(self, daemons: list[Daemon], providers: tuple[str, ...] = ("felloh", "fts")) -> None:
        self.daemons, self.providers = daemons, providers
        self.failures: list[str] = []
        self.answers = 0
        self.tokens: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(headers={"X-Tokend-Request": "test"}, timeout=10) as client:
            while not self._stop.is_set():
                for daemon in self.daemons:
                    if not alive(daemon):
                        continue
                    for provider in self.providers:
                        try:
                            answer = client.get(f"{daemon.url}/token/{provider}")
                        except httpx.TransportError as exc:
                            if alive(daemon):
                                self.failures.append(f"{daemon.url} {provider}: {exc!r}")
                            continue
                        self.answers += 1
                        if answer.status_code != 200:
                            self.failures.append(f"{daemon.url} {provider}: {answer.status_code} {answer.text}")
                        else:
                            self.tokens.add(answer.json()["token"])
                time.sleep(0.02)


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fts_share_key(daemon: Daemon) -> str:
    return FleetKey.of(base64.b64decode(KEY), "test").share_key(Settings.load(daemon.config).providers["fts"])


def fleet_status(daemon: Daemon) -> dict[str, Any]:
    return daemon.get("/status").json()


# --- the tests -------------------------------------------------------------------------------------------------


def test_five_daemons_share_one_login_per_token_lifetime(fleet: Fleet) -> None:
    for _ in range(5):
        fleet.add()
    began = time.monotonic()
    fleet.start()
    fakes = fleet.fakes
    # Five daemons started together: one login each, unless starting took so long (a busy machine) that the
    # first renewal (at 35 % of the lifetime at the earliest) came due meanwhile.
    allowed = 1 + int((time.monotonic() - began) / (0.35 * LIFETIME))
    assert fakes.felloh.logins <= allowed and fakes.fintech_studios.logins <= allowed
    sources = [fleet_status(d)["providers"]["fts"]["source"] for d in fleet.daemons]
    assert sources.count("fleet") >= 3 and "login" in sources

    started = time.monotonic()
    with Poller(fleet.daemons) as poller:
        time.sleep(3 * LIFETIME)
    elapsed = time.monotonic() - started
    assert not poller.failures, poller.failures[:5]
    # One daemon alone renews at 2/3 of the lifetime (± a tenth): about elapsed / 4 s. Five without the fleet
    # would log in five times as often.
    ideal = elapsed / (LIFETIME * 2 / 3)
    for fake in (fakes.felloh, fakes.fintech_studios):
        assert fake.logins - 1 <= ideal * 1.3 + 1, (fake.logins, ideal)
    # Every token any daemon served was one the fleet logged in for: none of the daemons logged in alone.
    assert len(poller.tokens) <= fakes.felloh.logins + fakes.fintech_studios.logins
    status = fleet_status(fleet.daemons[0])
    assert status["fleet"]["state"] == "ok" and status["fleet"]["namespace"] == "test"
    tallies = [fleet_status(d)["fleet"]["providers"]["fts"] for d in fleet.daemons]
    assert sum(t["leases_won"] for t in tallies) == fakes.fintech_studios.logins
    assert sum(t["adoptions"] for t in tallies) >= 4 * fakes.fintech_studios.logins - 4
    assert all(t["logins_alone"] == 0 for t in tallies)
    metrics = fleet.daemons[0].get("/metrics").text
    assert 'tokend_fleet_adoptions_total{provider="fts"}' in metrics
    assert 'tokend_fleet_leases_total{outcome="won",provider="fts"}' in metrics
    assert "tokend_fleet_redis_errors_total 0.0" in metrics

    # Redis holds no secret and no token in clear: every key and every value, swept.
    stored = fleet.redis.everything()
    assert any(key.endswith(":token") for key in stored)
    secrets = [KEY, fakes.felloh.public_key, fakes.felloh.private_key, fakes.fintech_studios.api_key,
               fakes.fintech_studios.password, fakes.fintech_studios.email, *fakes.flotiq.api_keys,
               *fakes.felloh.issued, *fakes.fintech_studios.issued]
    for key, value in stored.items():
        for secret in secrets:
            assert secret not in key and secret not in value, f"a secret or token in Redis under {key}"
    client = fleet.redis.client()
    for key in stored:
        if key.endswith(":token"):
            assert 0 < client.pttl(key) <= LIFETIME * 1000 + 1000, "a record expires with its token"


def test_a_forced_refresh_storm_across_the_fleet_costs_one_login(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            for _ in range(5):
                fleet.add(min_refresh_interval=5.0)
            fleet.start()
            before = fakes.fintech_studios.logins
            assert before == 1
            time.sleep(5.2)  # past min_refresh_interval since the first login
            answers = asyncio.run(storm([d.url for d in fleet.daemons], per_daemon=40))
            assert {code for code, _ in answers} == {200}
            assert fakes.fintech_studios.logins == before + 1, "200 forced refreshes on 5 daemons: one login"
            assert len({token for _, token in answers}) == 1
            assert fleet.tokens("fts") == [answers[0][1]] * 5
        finally:
            fleet.stop()


async def storm(urls: list[str], *, per_daemon: int) -> list[tuple[int, str]]:
    """`per_daemon` clients on each daemon, connected first, then all forcing a refresh at once."""
    limits = httpx.Limits(max_connections=per_daemon, max_keepalive_connections=per_daemon)
    clients = [httpx.AsyncClient(base_url=url, headers={"X-Tokend-Request": "test"}, timeout=30, limits=limits)
               for url in urls]
    try:
        await asyncio.gather(*(client.get("/livez") for client in clients for _ in range(per_daemon)))

        async def force(client: httpx.AsyncClient) -> tuple[int, str]:
            answer = await client.post("/token/fts/refresh")
            return answer.status_code, answer.json().get("token", "")

        return await asyncio.gather(*(force(client) for client in clients for _ in range(per_daemon)))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


def test_a_daemon_killed_while_holding_the_lease_costs_one_extra_login_and_no_503(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            for _ in range(4):
                fleet.add(min_refresh_interval=0.5)
            fleet.start()
            first_token = fleet.tokens("fts")[0]
            time.sleep(0.6)
            fakes.fintech_studios.hang(60)  # the holder's login never ends
            holder = fleet.daemons[0]
            assert holder.process is not None
            lease_key = f"tokend:test:{{{fts_share_key(holder)}}}:lease"
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
            pool.submit(holder.post, "/token/fts/refresh")
            wait_for(lambda: f":{holder.process.pid}:" in (redis_server.client().get(lease_key) or ""),  # type: ignore[union-attr]
                     what="the first daemon to hold the lease")
            others = [pool.submit(d.post, "/token/fts/refresh") for d in fleet.daemons[1:]]
            # Each of the others has its forced login under way, waiting for the holder's lease.
            wait_for(lambda: all(d.get("/status").json()["providers"]["fts"]["state"] == "refreshing"
                                 for d in fleet.daemons[1:]), what="the others to wait for the lease")
            with Poller(fleet.daemons[1:]) as poller:
                holder.process.send_signal(signal.SIGKILL)
                holder.process.wait(timeout=10)
                fakes.fintech_studios.recover()
                answers = [future.result(timeout=30) for future in others]
            pool.shutdown(wait=False)
            assert [a.status_code for a in answers] == [200, 200, 200]
            tokens = {a.json()["token"] for a in answers}
            assert len(tokens) == 1 and first_token not in tokens
            # The dead daemon's login never finished; after its lease expired, one other logged in for all.
            assert fakes.fintech_studios.logins == 2
            assert not poller.failures, poller.failures[:5]
        finally:
            fleet.stop()


def test_redis_killed_and_restarted_mid_run_no_503_fall_back_and_converge(fleet: Fleet) -> None:
    for _ in range(3):
        fleet.add()
    fleet.start()
    with Poller(fleet.daemons) as poller:
        time.sleep(1)
        fleet.redis.kill()
        wait_for(lambda: all(fleet_status(d)["fleet"]["state"] == "unavailable" for d in fleet.daemons),
                 timeout=2 * LIFETIME + 5, what="every daemon to notice that Redis is gone")
        time.sleep(LIFETIME)  # renewals go on alone
        fleet.redis.start()
        wait_for(lambda: all(fleet_status(d)["fleet"]["state"] == "ok" for d in fleet.daemons),
                 timeout=3 * LIFETIME, what="every daemon to use Redis again")
        wait_for(lambda: len(set(fleet.tokens("fts"))) == 1 and len(set(fleet.tokens("felloh"))) == 1,
                 timeout=3 * LIFETIME, what="the daemons to serve the fleet's tokens again")
    assert not poller.failures, poller.failures[:5]
    assert poller.answers > 100
    for daemon in fleet.daemons:
        log = daemon.log()
        assert "fleet_login_alone provider=" in log and "fleet_redis_up redis=" in log
        status = fleet_status(daemon)["fleet"]
        assert status["redis_errors"] > 0
        assert sum(t["logins_alone"] for t in status["providers"].values()) > 0


def test_after_redis_restarts_the_first_login_shares_through_it_again_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A restart leaves every pooled connection dead; the next call must not fail on one and send the daemon
    to log in alone for `retry_after` (30 s here, so that such a fall-back cannot go unseen)."""
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            _restart_then_refresh(fleet, redis_server)
        finally:
            fleet.stop()


def _restart_then_refresh(fleet: Fleet, redis_server: RedisServer) -> None:
    daemon = fleet.add(retry_after=30)
    fleet.start()
    token = daemon.get("/token/fts").json()["token"]
    redis_server.kill()
    redis_server.start()
    started = time.monotonic()
    answer = daemon.post("/token/fts/refresh", json={"rejected": token})
    took = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["token"] != token
    assert took < 3.0, took
    status = fleet_status(daemon)["fleet"]
    assert status["state"] == "ok", status
    assert status["providers"]["fts"]["logins_alone"] == 0 and status["providers"]["fts"]["leases_won"] == 2
    assert any(key.endswith(":token") for key in redis_server.everything()), "the new token went to the fleet"
    # An adoption is not a login: logged and counted apart.
    other = fleet.add(retry_after=30)
    fleet.start([other])
    assert other.get("/token/fts").json()["token"] == answer.json()["token"]
    assert "adopt provider=fts outcome=ok" in other.log() and "login provider=fts" not in other.log()
    metrics = other.get("/metrics").text
    assert 'tokend_fleet_adoptions_total{provider="fts"} 1.0' in metrics
    assert 'tokend_logins_total{outcome="ok",provider="fts"}' not in metrics


def test_check_asks_redis_once_and_says_whether_the_key_is_the_fleets(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    def check(daemon: Daemon) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tokend_command("--config", str(daemon.config), "check"), capture_output=True,
                              text=True, timeout=60)

    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            first, stranger = fleet.add(), fleet.add(key=OTHER_KEY)
            before = check(first)
            assert before.returncode == 0, before.stdout + before.stderr
            assert f"  fleet: namespace test\n    Redis at {redis_server.url} answered in" in before.stdout
            assert "no daemon of namespace test has written a token yet" in before.stdout
            fleet.start([first])
            ours = FleetKey.of(base64.b64decode(KEY), "test").id
            after = check(first)
            assert after.returncode == 0, after.stdout
            assert f"key id {ours}: the fleet writes with it" in after.stdout
            assert "fts: the fleet's current token opens with this key" in after.stdout
            wrong = check(stranger)
            assert wrong.returncode == 3, wrong.stdout
            assert f"error: fleet: daemons of namespace test write with key id(s) {ours}, which this config's keys " \
                   "are not" in wrong.stdout
            redis_server.kill()
            started = time.monotonic()
            down = check(first)
            assert down.returncode == 0 and time.monotonic() - started < 15, down.stdout
            assert "warning: fleet: Redis did not answer" in down.stdout and "log in alone" in down.stdout
            for result in (before, after, wrong, down):
                assert KEY not in result.stdout + result.stderr and OTHER_KEY not in result.stdout + result.stderr
        finally:
            fleet.stop()


def test_a_daemon_with_another_encryption_key_never_serves_the_fleets_token_and_says_why(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            for _ in range(3):
                fleet.add(min_refresh_interval=0.5)
            fleet.start()
            wrong = fleet.add(key=OTHER_KEY, min_refresh_interval=0.5)
            fleet.start([wrong])
            assert fakes.fintech_studios.logins == 2, "the odd daemon logged in by itself"
            shared = fleet.tokens("fts")
            assert len(set(shared[:3])) == 1 and shared[3] != shared[0]
            assert fleet_status(wrong)["providers"]["fts"]["source"] == "login"
            wait_for(lambda: "fleet_foreign_key namespace=" in wrong.log(), what="the odd daemon to say why")
            assert fleet_status(wrong)["fleet"]["other_key_ids"]

            # A record that does not decrypt (tampered with, or written with a key this daemon lacks) is never
            # served: the daemon that finds it logs in itself, says why, and the fleet has a good record again.
            client = redis_server.client()
            record_key = f"tokend:test:{{{fts_share_key(fleet.daemons[0])}}}:token"
            record = client.get(record_key)
            assert record is not None
            client.set(record_key, record[:-8] + ("A" * 8 if record[-1] != "A" else "B" * 8), px=60_000)
            time.sleep(0.6)
            before = fakes.fintech_studios.logins
            answer = fleet.daemons[1].post("/token/fts/refresh")
            assert answer.status_code == 200 and answer.json()["token"] != shared[0]
            assert fakes.fintech_studios.logins == before + 1
            log = fleet.daemons[1].log()
            assert "cannot use the fleet's token" in log and "tampered" in log
            assert fleet_status(fleet.daemons[1])["fleet"]["providers"]["fts"]["unreadable_records"] == 1
        finally:
            fleet.stop()


def test_a_failed_login_is_shared_so_the_fleet_does_not_retry_it_daemon_after_daemon(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            for _ in range(4):
                fleet.add(min_refresh_interval=0.5)
            fleet.start()
            time.sleep(0.6)
            fts = fakes.fintech_studios
            fts.fail(401)  # the password was changed upstream: every daemon's next login is refused
            attempts = fts.login_attempts
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                answers = list(pool.map(lambda d: d.post("/token/fts/refresh"), fleet.daemons))
            assert [a.status_code for a in answers] == [502] * 4
            assert fts.login_attempts == attempts + 1, "one refused login for the fleet, not one per daemon"
            assert any("another daemon of the fleet" in a.json()["message"] for a in answers)
            # The tokens held are still served meanwhile.
            assert all(d.get("/token/fts").status_code == 200 for d in fleet.daemons)
            stored = redis_server.everything()
            assert any(key.endswith(":failed") for key in stored)
            for value in stored.values():
                assert fts.password not in value and fts.api_key not in value
        finally:
            fleet.stop()


def test_during_a_key_rotation_the_old_key_is_still_read(tmp_path: Path, redis_server: RedisServer) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, redis_server)
        try:
            fleet.start([fleet.add()])
            rotated = fleet.add(key=OTHER_KEY, old_keys=(KEY,))
            fleet.start([rotated])
            assert fakes.fintech_studios.logins == 1, "the rotated daemon read the old key's record"
            assert len(set(fleet.tokens("fts"))) == 1
            assert fleet_status(rotated)["providers"]["fts"]["source"] == "fleet"
            # Felloh's key rotation would delete the pair the rest of the fleet logs in with: refused.
            refused = subprocess.run(
                tokend_command("--config", str(rotated.config), "felloh", "rotate", "--provider", "felloh",
                               "--organisation", "X9876"), capture_output=True, text=True, timeout=60)
            assert refused.returncode == 1 and "refused in fleet mode" in refused.stderr, refused.stderr
            assert len(fakes.felloh.keys) == 1
        finally:
            fleet.stop()


def test_two_configs_with_different_credentials_never_share(fleet: Fleet) -> None:
    right = fleet.add()
    fleet.start()

    def wrong_password(directory: Path) -> None:
        (directory / "fts_password").write_text("not-the-password\n")

    wrong = fleet.add(adjust=wrong_password)
    fleet.start([wrong], ready=False)
    wrong.wait_until(lambda: wrong.get("/status").json()["providers"]["fts"]["state"] == "failed",
                     what="the wrong password to fail")
    assert wrong.get("/token/fts").status_code == 503, "never the other config's token"

    def same_felloh() -> bool:  # the same settings share: one token (as of the same renewal) for both
        answers = [daemon.get("/token/felloh") for daemon in (wrong, right)]
        return all(a.status_code == 200 for a in answers) and len({a.json()["token"] for a in answers}) == 1

    wrong.wait_until(same_felloh, what="felloh's token, shared by both configs")
    assert fleet_status(wrong)["fleet"]["providers"]["fts"]["adoptions"] == 0


def test_tls_to_redis_with_a_throwaway_ca(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    directory = tmp_path / "tls"
    directory.mkdir()
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = RedisServer(tmp_path / "redis-tls", tls=(cert_file, key_file, ca_file)).start()
    with serve_fakes(lifetime=3600) as fakes:
        _tls_fleet(tmp_path, fakes, server, ca_file)


def _tls_fleet(tmp_path: Path, fakes: FakeProviders, server: RedisServer, ca_file: Path) -> None:
    fleet = Fleet(tmp_path, fakes, server)
    try:
        for _ in range(2):
            # A TLS handshake on a busy CI machine can take a while: bounds for that, not for the LAN.
            fleet.add(fleet_extra=f'ca_bundle = "{ca_file}"\nconnect_timeout = 5\n')
        fleet.start()
        logs = "\n".join(d.log() for d in fleet.daemons)
        assert fakes.fintech_studios.logins == 1, logs
        assert len(set(fleet.tokens("fts"))) == 1
        assert fleet_status(fleet.daemons[0])["fleet"]["redis"].startswith("rediss://")
        # Without the CA, the certificate is refused: the daemon logs in alone, and says so.
        untrusting = fleet.add()
        fleet.start([untrusting])
        assert fleet_status(untrusting)["fleet"]["state"] == "unavailable"
        assert "fleet_login_alone provider=" in untrusting.log()
    finally:
        fleet.stop()
        server.kill()
