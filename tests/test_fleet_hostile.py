"""Fleet mode against someone who can write to the fleet's Redis (a shared Redis is the normal case): real
redis-server, real daemons, the hostile content written into Redis directly. Whatever Redis holds, a daemon
keeps serving its own valid token and logs in alone when the fleet's data cannot be trusted."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_redis import RedisServer
from tests.test_fleet import KEY, Fleet, fleet_status, fts_share_key, wait_for
from tokend.errors import UpstreamError
from tokend.fleet.envelope import FleetKey, seal_failure
from tokend.testing import serve_fakes

PREFIX = "tokend:test"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A Redis of the test's own, and the fakes with tokens that outlive the test: each login is the test's."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        with serve_fakes(lifetime=3600) as fakes:
            group = Fleet(tmp_path, fakes, server)
            yield group
            group.stop()
    finally:
        server.kill()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_replayed_old_failure_record_holds_no_daemon_off(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = fleet.fakes
    daemon = fleet.add()
    share = fts_share_key(daemon)
    # A genuine failure record, sealed an hour ago (as one captured then would be), put back with no expiry.
    key = FleetKey.of(base64.b64decode(KEY), "test")
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)
    old = seal_failure(UpstreamError("fts", "login answered 401", status=401), key, share, 60)
    monkeypatch.undo()
    fleet.redis.client().set(f"{PREFIX}:{{{share}}}:failed", old)
    fleet.start([daemon], ready=False)
    daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, timeout=20, what="ready despite the record")
    assert fakes.fintech_studios.logins == 1
    assert "out of its time" in daemon.log()


def test_garbage_in_the_key_id_hash_never_fails_a_login(fleet: Fleet) -> None:
    redis = fleet.redis.client()
    redis.hset(f"{PREFIX}:keys", mapping={"zz": "not-a-time", "0123456789abcdef": "x" * 50, "k" * 5000: "1"})
    redis.hset(f"{PREFIX}:keys", mapping={os.urandom(8).hex(): str(int(time.time())) for _ in range(500)})
    daemon = fleet.add(min_refresh_interval=0.5)
    fleet.start()
    time.sleep(0.6)  # past min_refresh_interval
    refreshed = daemon.post("/token/fts/refresh")
    assert refreshed.status_code == 200 and refreshed.headers["x-tokend-new-login"] == "yes", refreshed.text
    assert "unexpected" not in daemon.log() and "Traceback" not in daemon.log()
    assert len(fleet_status(daemon)["fleet"]["other_key_ids"]) <= 64


def test_an_older_record_put_back_never_turns_a_daemon_back_to_an_older_token(fleet: Fleet) -> None:
    daemon = fleet.add(min_refresh_interval=0.5)
    fleet.start()
    share = fts_share_key(daemon)
    redis = fleet.redis.client()
    first, old_record = daemon.get("/token/fts").json()["token"], redis.get(f"{PREFIX}:{{{share}}}:token")
    assert old_record
    time.sleep(0.6)
    second = daemon.post("/token/fts/refresh").json()["token"]
    assert second != first
    redis.set(f"{PREFIX}:{{{share}}}:token", old_record, ex=3600)  # the older record, put back
    # Naming the held token as rejected used to adopt the record put back: "already replaced".
    time.sleep(0.6)
    replaced = daemon.post("/token/fts/refresh", json={"rejected": second})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["token"] not in (first, second)
    assert daemon.get("/token/fts").json()["token"] not in (first, second)


def test_a_lease_with_no_expiry_is_broken_after_the_normal_lease_time(fleet: Fleet) -> None:
    daemon = fleet.add()
    share = fts_share_key(daemon)
    redis = fleet.redis.client()
    redis.set(f"{PREFIX}:{{{share}}}:lease", "someone-else")  # no expiry
    fleet.start([daemon], ready=False)
    started = time.monotonic()  # listening: the first login is under way
    daemon.wait_until(lambda: daemon.get("/token/fts").status_code == 200, timeout=30, what="the first token")
    took = time.monotonic() - started
    # The lease is 1.5 s in these tests; without the repair the daemon waited out the whole login deadline
    # (timeout 10 s + lease + 1 s) before logging in alone.
    assert took < 7, (took, daemon.log())
    assert fleet_status(daemon)["fleet"]["providers"]["fts"]["logins_alone"] == 0

    redis.set(f"{PREFIX}:{{{share}}}:lease", "someone-else", ex=100_000)  # an expiry far beyond the lease length
    time.sleep(0.6)
    started = time.monotonic()
    assert daemon.post("/token/fts/refresh").status_code == 200
    assert time.monotonic() - started < 9


def test_wake_ups_for_share_keys_this_daemon_does_not_hold_cost_no_memory(fleet: Fleet) -> None:
    daemon = fleet.add()
    fleet.start()
    assert daemon.process is not None
    redis = fleet.redis.client()
    before = _peak_rss(daemon.process.pid)
    record = "v2.0123456789abcdef." + "A" * 20_000
    for _ in range(30):
        with redis.pipeline(transaction=False) as pipe:
            for _n in range(100):
                pipe.publish(f"{PREFIX}:published", f"{os.urandom(32).hex()} {record}")
            pipe.execute()
        time.sleep(0.05)  # in batches Redis passes on: its output buffer limit would drop the subscriber
    wait_for(lambda: daemon.get("/livez").status_code == 200, what="the daemon to answer")
    time.sleep(1)  # the listener works through the backlog
    growth = _peak_rss(daemon.process.pid) - before
    assert growth < 24 * 1024 * 1024, f"{growth / 2**20:.0f} MiB for 3,000 wake-ups of 20 kB"
    assert daemon.get("/token/fts").status_code == 200


def test_a_record_copied_into_another_namespace_is_not_adopted(fleet: Fleet) -> None:
    fakes = fleet.fakes
    first = fleet.add()
    fleet.start()
    share = fts_share_key(first)
    redis = fleet.redis.client()
    redis.set(f"tokend:other:{{{share}}}:token", redis.get(f"{PREFIX}:{{{share}}}:token") or "", ex=3600)
    logins = fakes.fintech_studios.logins
    other = fleet.add()
    other.config.write_text(other.config.read_text().replace('namespace = "test"', 'namespace = "other"'))
    fleet.start([other])
    assert fakes.fintech_studios.logins == logins + 1
    assert fleet_status(other)["fleet"]["providers"]["fts"]["adoptions"] == 0
    assert other.get("/token/fts").json()["token"] != first.get("/token/fts").json()["token"]


def test_whatever_redis_holds_a_daemon_serves_its_own_token(fleet: Fleet) -> None:
    daemon = fleet.add(min_refresh_interval=0.5)
    fleet.start()
    share = fts_share_key(daemon)
    redis = fleet.redis.client()
    redis.delete(f"{PREFIX}:{{{share}}}:token")
    redis.hset(f"{PREFIX}:{{{share}}}:token", mapping={"not": "a string"})  # the wrong type: every GET errors
    redis.set(f"{PREFIX}:{{{share}}}:failed", "v2.garbage.garbage")
    time.sleep(0.6)
    refreshed = daemon.post("/token/fts/refresh")
    assert refreshed.status_code == 200, refreshed.text
    assert daemon.get("/token/fts").status_code == 200
    assert daemon.get("/readyz").status_code == 200


def test_the_fleets_failure_hold_applies_whatever_record_the_claim_finds(fleet: Fleet) -> None:
    """A record this daemon does not hold (another daemon's, or one it cannot read) never skips the fleet's
    failure hold: the claim reads the failure first."""
    fakes = fleet.fakes
    daemon = fleet.add(min_refresh_interval=0.5)
    share = fts_share_key(daemon)
    fleet.start([daemon])
    time.sleep(0.6)
    key = FleetKey.of(base64.b64decode(KEY), "test")
    client = fleet.redis.client()
    client.set(f"{PREFIX}:{{{share}}}:failed",
               seal_failure(UpstreamError("fts", "login answered 401", status=401), key, share, 60), px=60_000)
    client.set(f"{PREFIX}:{{{share}}}:token", "v2.0000000000000000.bm90IGEgcmVjb3Jk")  # not the daemon's own
    attempts = fakes.fintech_studios.login_attempts
    answer = daemon.post("/token/fts/refresh")
    assert answer.status_code == 502 and "another daemon of the fleet" in answer.json()["message"], answer.text
    assert fakes.fintech_studios.login_attempts == attempts, "the fleet's failure hold was skipped"
    assert daemon.get("/token/fts").status_code == 200  # the token held is still served
