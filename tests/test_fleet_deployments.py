"""Fleet mode on the Redis deployments production runs, all real: a primary with a replica behind three
redis-sentinel processes (failed over under load), a Cluster of three primaries, an ACL user allowed only the
commands tokend sends, TLS with a verified server and a client certificate; and the settings that are refused.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.daemon import Daemon, tokend_command
from tests.fleet_redis import Cluster, RedisServer, SentinelSet, fleet_key
from tests.test_fleet import Fleet, Poller, fleet_status, fts_share_key, wait_for
from tokend.fleet.config import FleetConfig
from tokend.renewal.policy import RENEW_AT, RENEW_BEFORE_EXPIRY, RENEW_LATEST
from tokend.testing import FakeProviders, serve_fakes

LIFETIME = 12.0  # seconds: a failover (about 3 s here) fits between renewals; a test still sees several

# What tokend sends to a data node (derived from tokend.fleet.store and redis-py's connection set-up), as a
# fleet user's ACL rules: the namespace's keys and channel, and nothing else. (Redis 7.2 and later also know
# CLIENT SETINFO, with which redis-py names itself; refused, it carries on.)
ACL_RULES = ["~tokend:test:*", "&tokend:test:*", "-@all", "+hello", "+ping", "+get", "+mget",
             "+set", "+del", "+exists", "+pexpire", "+pttl", "+hset", "+hscan", "+publish", "+subscribe",
             "+evalsha", "+script|load", "+wait", "+info"]


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def fakes() -> Iterator[FakeProviders]:
    with serve_fakes(lifetime=LIFETIME) as providers:
        yield providers


@pytest.fixture
def lasting_fakes() -> Iterator[FakeProviders]:
    """Tokens of an hour, for the tests that count logins to the one: no renewal falls inside them."""
    with serve_fakes(lifetime=3600) as providers:
        yield providers


def logins(fakes: FakeProviders) -> dict[str, int]:
    return {"felloh": fakes.felloh.logins, "fts": fakes.fintech_studios.logins}


def alone(daemon: Daemon) -> int:
    return sum(t["logins_alone"] for t in fleet_status(daemon)["fleet"]["providers"].values())


def one_daemons_logins(seconds: float, lifetime: float) -> float:
    """How many times one daemon alone renews in `seconds` (tokend.policy, without its jitter): both fakes
    write the expiry in whole seconds, so the lifetime a daemon sees is about half a second shorter."""
    seen = lifetime - 0.5
    return seconds / min(RENEW_AT * seen, RENEW_LATEST * seen, seen - RENEW_BEFORE_EXPIRY)


# --- Sentinel ---------------------------------------------------------------------------------------------------


def test_sentinel_failover_then_a_killed_primary_under_load_costs_no_503_and_at_most_one_login_each(
    tmp_path: Path, fakes: FakeProviders
) -> None:
    sentinels = SentinelSet(tmp_path / "sentinel").start()
    fleet = Fleet(tmp_path, fakes, sentinels.primary)
    where = f"sentinels = {sentinels.addresses!r}\nsentinel_service = \"tokend\"\n".replace("'", '"')
    try:
        for _ in range(3):
            fleet.add(where=where, fleet_extra="failover_timeout = 8\nconnect_timeout = 0.5\n")
        fleet.start()
        assert logins(fakes) == {"felloh": 1, "fts": 1}
        with Poller(fleet.daemons) as poller:
            time.sleep(LIFETIME / 2)
            before = logins(fakes)
            started = time.monotonic()
            sentinels.failover()  # the coordinated one: the old primary turns replica
            time.sleep(LIFETIME / 2)
            sentinels.kill_primary()  # then the new primary dies: the sentinels promote the old one again
            time.sleep(LIFETIME)
            elapsed = time.monotonic() - started
        assert not poller.failures, poller.failures[:5]
        assert poller.answers > 100
        # Two failovers may cost a login more each (per provider, not per daemon), and one for the window's edge.
        ideal = one_daemons_logins(elapsed, LIFETIME)
        for provider, count in logins(fakes).items():
            assert count - before[provider] <= ideal + 2 + 1, (provider, count - before[provider], ideal)
        # The fleet shares records again: every daemon serves the same token, from the new primary.
        wait_for(lambda: len(set(fleet.tokens("fts"))) == 1, timeout=10, what="one token for the fleet again")
        new_primary = sentinels.current_primary()
        assert any(key.endswith(":token") for key in new_primary.everything())
        for daemon in fleet.daemons:
            assert fleet_status(daemon)["fleet"]["state"] == "ok"
            assert "outcome=bug" not in daemon.log() and "Traceback" not in daemon.log()
        result = check(fleet.daemons[0].config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"reached: Sentinel service tokend: primary at 127.0.0.1:{new_primary.port}" in result.stdout
        assert "as Redis's default user" in result.stdout and "without TLS" in result.stdout
    finally:
        fleet.stop()
        sentinels.kill()


# --- Cluster ----------------------------------------------------------------------------------------------------


def test_a_cluster_of_three_primaries_shares_logins_like_one_daemon_through_a_slot_migration(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster").start()
    lifetime = 6.0
    try:
        with serve_fakes(lifetime=lifetime) as fakes:
            fleet = Fleet(tmp_path, fakes, cluster.nodes[0])
            where = f'cluster_nodes = ["{cluster.addresses[0]}"]\n'
            try:
                for _ in range(3):
                    fleet.add(where=where)
                fleet.start()
                share = fts_share_key(fleet.daemons[0])
                alone_before = [alone(daemon) for daemon in fleet.daemons]
                started, before = time.monotonic(), logins(fakes)
                with Poller(fleet.daemons) as poller:
                    time.sleep(1.5 * lifetime)
                    moved = cluster.move_slot_of(fleet_key("test", share, "token"))  # under load
                    time.sleep(1.5 * lifetime)
                elapsed = time.monotonic() - started
                assert not poller.failures, poller.failures[:5]
                ideal = one_daemons_logins(elapsed, lifetime)
                for provider, count in logins(fakes).items():
                    assert count - before[provider] <= ideal * 1.1 + 1, (provider, count - before[provider], ideal)
                # (A busy machine may make a daemon's very first call, which reads the topology, time out.)
                assert [alone(daemon) for daemon in fleet.daemons] == alone_before, "no login alone under load"
                # Each provider's keys in one slot, and so on one node: the node the slot moved to.
                holding = [node for node, keys in cluster.keys().items() if fleet_key("test", share, "token") in keys]
                assert holding == [moved[1]]
                result = check(fleet.daemons[0].config)
                assert result.returncode == 0, result.stdout + result.stderr
                assert "reached: Cluster: 3 primaries" in result.stdout
            finally:
                fleet.stop()
    finally:
        cluster.kill()


# --- ACL user, TLS ----------------------------------------------------------------------------------------------


def test_an_acl_user_with_only_the_documented_commands_shares_tokens(tmp_path: Path,
                                                                     lasting_fakes: FakeProviders) -> None:
    server = RedisServer(tmp_path / "redis", args=["--user", "tokend", "on", ">fleet-password", *ACL_RULES]).start()
    fleet = Fleet(tmp_path, lasting_fakes, server)
    try:
        (tmp_path / "redis_password").write_text("fleet-password\n")
        (tmp_path / "redis_password").chmod(0o600)
        extra = f'username = "tokend"\npassword = {{ file = "{tmp_path / "redis_password"}" }}\n'
        for _ in range(2):
            fleet.add(fleet_extra=extra, min_refresh_interval=3)
        fleet.start()
        assert logins(lasting_fakes) == {"felloh": 1, "fts": 1}
        time.sleep(3.2)  # past min_refresh_interval: a forced refresh logs in
        assert fleet.daemons[0].post("/token/fts/refresh").status_code == 200
        # The other daemon's forced refresh, within the fleet-wide min_refresh_interval of that login, takes
        # the fleet's newer record: no login of its own.
        assert fleet.daemons[1].post("/token/fts/refresh").status_code == 200
        assert len(set(fleet.tokens("fts"))) == 1
        assert lasting_fakes.fintech_studios.logins == 2
        denied = server.client().acl_log()
        assert not denied, denied
        result = check(fleet.daemons[0].config)
        assert result.returncode == 0 and "as user tokend" in result.stdout, result.stdout + result.stderr
        assert "fleet-password" not in result.stdout + result.stderr
        assert all(fleet_status(d)["fleet"]["redis_errors"] == 0 for d in fleet.daemons)
    finally:
        fleet.stop()
        server.kill()


def _tls_files(directory: Path) -> tuple[Path, Path, Path, Path, Path]:
    """A throwaway CA; the server's pair for 127.0.0.1 and the name redis.test; a client pair."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    directory.mkdir()
    server = ca.issue_cert("127.0.0.1", "redis.test")
    client = ca.issue_cert("tokend-client")
    paths = [directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")]
    ca.cert_pem.write_to_path(str(paths[0]))
    server.cert_chain_pems[0].write_to_path(str(paths[1]))
    server.private_key_pem.write_to_path(str(paths[2]))
    client.cert_chain_pems[0].write_to_path(str(paths[3]))
    client.private_key_pem.write_to_path(str(paths[4]))
    paths[4].chmod(0o600)
    return paths[0], paths[1], paths[2], paths[3], paths[4]


def test_mutual_tls_with_a_verified_server_and_a_wrong_server_name_refused(tmp_path: Path,
                                                                         lasting_fakes: FakeProviders) -> None:
    ca, server_cert, server_key, client_cert, client_key = _tls_files(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", tls=(server_cert, server_key, ca), client_certificates=True).start()
    fleet = Fleet(tmp_path, lasting_fakes, server)
    url = f"rediss://127.0.0.1:{server.port}/0"
    mutual = f'ca_bundle = "{ca}"\nclient_certificate = "{client_cert}"\nclient_key = {{ file = "{client_key}" }}\n'
    try:
        for _ in range(2):
            fleet.add(redis_url=url, fleet_extra=mutual + 'tls_server_name = "redis.test"\nconnect_timeout = 5\n')
        fleet.start()
        assert logins(lasting_fakes) == {"felloh": 1, "fts": 1}
        assert len(set(fleet.tokens("fts"))) == 1
        result = check(fleet.daemons[0].config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (f"TLS, server certificate verified against ca_bundle {ca}, name redis.test, client certificate "
                f"{client_cert}") in result.stdout

        # Without a client certificate the server refuses; with the wrong name checked, tokend does.
        no_client = fleet.add(redis_url=url, fleet_extra=f'ca_bundle = "{ca}"\nconnect_timeout = 5\n')
        refused = check(no_client.config)
        assert "warning: fleet: Redis did not answer" in refused.stdout, refused.stdout
        wrong_name = fleet.add(redis_url=url, fleet_extra=mutual + 'tls_server_name = "other.test"\n')
        wrong = check(wrong_name.config)
        assert wrong.returncode == 3, wrong.stdout + wrong.stderr
        assert "error: fleet: the Redis server's TLS certificate cannot be verified" in wrong.stdout
        assert "tls_server_name" in wrong.stdout
        untrusted = fleet.add(redis_url=url)  # rediss:// and the system's CAs, which never signed this one
        assert check(untrusted.config).returncode == 3
    finally:
        fleet.stop()
        server.kill()


def test_a_cluster_over_tls_shares_logins_with_its_server_certificates_verified(tmp_path: Path,
                                                                              lasting_fakes: FakeProviders) -> None:
    """TLS to every node the client finds, not only to the ones configured: redis-py makes a connection for
    each node it learns of from CLUSTER SLOTS."""
    ca, server_cert, server_key, _, _ = _tls_files(tmp_path / "tls")
    cluster = Cluster(tmp_path / "cluster", tls=(server_cert, server_key, ca)).start()
    fleet = Fleet(tmp_path, lasting_fakes, cluster.nodes[0])
    nodes = ", ".join(f'"{address}"' for address in cluster.addresses[:1])  # one: the others are found
    try:
        for _ in range(2):
            fleet.add(where=f"cluster_nodes = [{nodes}]\ntls = true\n",
                      fleet_extra=f'ca_bundle = "{ca}"\ntls_server_name = "redis.test"\n')
        fleet.start()
        assert logins(lasting_fakes) == {"felloh": 1, "fts": 1}
        assert len(set(fleet.tokens("fts"))) == 1
        holding = [node for node, keys in cluster.keys().items() if any(":{" in key for key in keys)]
        assert holding, "the records are written through TLS to the nodes that hold their slots"
        assert asyncio.run(_ping_every_primary(FleetConfig.model_validate({
            "encryption_key": FLEET_KEY, "cluster_nodes": cluster.addresses[:1], "tls": True, "ca_bundle": str(ca),
            "tls_server_name": "redis.test"}))) == 3
        result = check(fleet.daemons[0].config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reached: Cluster: 3 primaries" in result.stdout
        assert f"TLS, server certificate verified against ca_bundle {ca}, name redis.test" in result.stdout
        assert all(fleet_status(d)["fleet"]["redis_errors"] == 0 for d in fleet.daemons)
    finally:
        fleet.stop()
        cluster.kill()


async def _ping_every_primary(config: FleetConfig) -> int:
    """The primaries the fleet's own client finds from `config`, each answering a PING through it."""
    from redis.asyncio.cluster import RedisCluster

    from tokend.fleet.deployment import Deployment

    deployment = Deployment(config)
    try:
        assert isinstance(deployment.redis, RedisCluster)
        answers = await deployment.redis.ping(target_nodes=RedisCluster.PRIMARIES)
        assert answers is True, answers
        return len(deployment.redis.get_primaries())
    finally:
        await deployment.close()


# --- settings refused -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "said"), [
    ("redis://127.0.0.1:6379/0?sentinel_master=m", "set sentinels and sentinel_service in [fleet] instead"),
    ("rediss://127.0.0.1:6380/0?ssl_ca_certs=/etc/ca.pem", "set ca_bundle in [fleet] instead"),
    ("rediss://127.0.0.1:6380/0?ssl_certfile=/etc/c.pem", "set client_certificate in [fleet] instead"),
    ("redis://127.0.0.1:6379/0?made_up=1", "tokend takes no connection options in the URL"),
    ("redis://10.0.0.1:6379,10.0.0.2:6379/0", "names several hosts"),
])
def test_a_url_with_connection_options_or_several_hosts_is_refused_naming_the_setting(
    tmp_path: Path, url: str, said: str
) -> None:
    with serve_fakes(lifetime=3600) as fakes:
        fleet = Fleet(tmp_path, fakes, RedisServer(tmp_path / "unused"))
        result = check(fleet.add(redis_url=url).config)
    assert result.returncode == 3, result.stdout + result.stderr
    assert said in result.stderr and "redis_url" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_reload_with_a_bad_redis_url_keeps_the_running_config(tmp_path: Path, fakes: FakeProviders) -> None:
    server = RedisServer(tmp_path / "redis").start()
    fleet = Fleet(tmp_path, fakes, server)
    try:
        daemon: Daemon = fleet.add()
        fleet.start()
        config = daemon.config.read_text()
        daemon.config.write_text(config.replace(f'redis_url = "{server.url}"',
                                                f'redis_url = "{server.url}/0?service_name=tokend"'))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_until(lambda: "reload_refused" in daemon.log(), what="the reload refused")
        assert "set sentinels and sentinel_service in [fleet] instead" in daemon.log()
        assert daemon.get("/token/fts").status_code == 200
        assert fleet_status(daemon)["fleet"]["state"] == "ok"
    finally:
        fleet.stop()
        server.kill()


def test_any_error_of_the_redis_layer_is_a_redis_failure_never_a_failed_login(tmp_path: Path,
                                                                             fakes: FakeProviders) -> None:
    """A key of the wrong type answers every call with an error redis-py raises as it is: the daemon logs in
    alone and serves, it never logs outcome=bug or answers 503."""
    server = RedisServer(tmp_path / "redis").start()
    fleet = Fleet(tmp_path, fakes, server)
    try:
        daemon = fleet.add(min_refresh_interval=0.5)
        fleet.start()
        share = fts_share_key(daemon)
        client = server.client()
        client.delete(fleet_key("test", share, "token"))
        client.hset(fleet_key("test", share, "token"), mapping={"not": "a string"})
        time.sleep(0.6)
        answer = daemon.post("/token/fts/refresh")
        assert answer.status_code == 200, answer.text
        assert "outcome=bug" not in daemon.log() and "Traceback" not in daemon.log()
        assert "fleet_login_alone provider=fts" in daemon.log()
    finally:
        fleet.stop()
        server.kill()


def test_a_record_under_the_old_key_name_is_carried_over(tmp_path: Path, lasting_fakes: FakeProviders) -> None:
    """A fleet upgraded in place keeps the token (and a user token's refresh token) Redis holds for it."""
    server = RedisServer(tmp_path / "redis").start()
    fleet = Fleet(tmp_path, lasting_fakes, server)
    try:
        first = fleet.add()
        fleet.start([first])
        share = fts_share_key(first)
        client = server.client()
        new_name = fleet_key("test", share, "token")
        client.rename(new_name, f"tokend:test:token:{share}")  # as a daemon of the earlier layout left it
        second = fleet.add()
        fleet.start([second])
        assert lasting_fakes.fintech_studios.logins == 1, "the second daemon adopted the record under its old name"
        assert second.get("/token/fts").json()["token"] == first.get("/token/fts").json()["token"]
        assert client.get(new_name) is not None
    finally:
        fleet.stop()
        server.kill()


def test_the_cluster_refuses_nothing_tokend_sends(tmp_path: Path) -> None:
    """Every script's keys in one slot: a Cluster answers CROSSSLOT otherwise, which would show as a
    Redis error on every call."""
    cluster = Cluster(tmp_path / "cluster").start()
    try:
        with serve_fakes(lifetime=3600) as fakes:
            fleet = Fleet(tmp_path, fakes, cluster.nodes[0])
            try:
                daemon = fleet.add(where=f'cluster_nodes = {cluster.addresses!r}\n'.replace("'", '"'),
                                   min_refresh_interval=0.5)
                fleet.start()
                time.sleep(0.6)  # past min_refresh_interval: the forced refresh logs in (a second lease)

                def logged_in() -> bool:
                    answer = daemon.post("/token/fts/refresh")
                    assert answer.status_code == 200, answer.text
                    return answer.headers["x-tokend-new-login"] == "yes"

                daemon.wait_until(logged_in, what="a forced refresh that logs in")
                status = fleet_status(daemon)["fleet"]
                assert status["redis_errors"] == 0 and status["state"] == "ok", status
                assert status["providers"]["fts"]["leases_won"] == 2
            finally:
                fleet.stop()
    finally:
        cluster.kill()


def test_on_a_cluster_an_intent_counts_as_replicated_only_once_the_slots_replica_has_it(tmp_path: Path) -> None:
    """Before a refresh token is spent, the intent must be on a replica (a failover would lose it otherwise).
    WAIT waits for what its own connection last saw: on another of the client's connections, idle since
    before the intent was written, it answers at once that a replica has everything."""
    from tokend.fleet.store import NotReplicated, Store

    cluster = Cluster(tmp_path / "cluster", count=6, replicas=1).start()
    try:
        store = Store(FleetConfig.model_validate({"encryption_key": FLEET_KEY, "cluster_nodes": cluster.addresses}))
        key = store.intent_key("user")
        slot_primary = cluster.client().get_node_from_key(key).port
        (replica,) = [node for node in cluster.nodes
                      if node.client().info("replication").get("master_port") == slot_primary]
        wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", what="the replica's link")

        async def intend(generation: int) -> str | None:
            return await store.intend("user", generation, "daemon-a", 60_000)

        async def run() -> None:
            try:
                assert await intend(1) is None  # written, and acknowledged by the slot's replica
                # The client holds several connections to the primary, as a daemon's concurrent calls leave it,
                # and the replica acknowledges what each last saw (it acknowledges every second).
                await asyncio.gather(*(store.read(["user"]) for _ in range(4)))
                await asyncio.sleep(1.5)
                assert replica.process is not None
                replica.process.send_signal(signal.SIGSTOP)  # still connected to its primary, acknowledging nothing
                try:
                    for generation in range(2, 6):
                        with pytest.raises(NotReplicated):
                            await intend(generation)
                finally:
                    replica.process.send_signal(signal.SIGCONT)
                assert await intend(6) is None
            finally:
                await store.close()

        asyncio.run(run())
    finally:
        cluster.kill()


# --- the settings, as units ------------------------------------------------------------------------------------

FLEET_KEY = "a" * 43 + "="  # 32 bytes, base64


@pytest.mark.parametrize(("settings", "said"), [
    ({}, "give exactly one of redis_url (one Redis), sentinels (Sentinel) or cluster_nodes (Cluster); none is set"),
    ({"redis_url": "redis://h:6379", "cluster_nodes": ["h:7000"]}, "redis_url and cluster_nodes are set"),
    ({"sentinels": ["h:26379"]}, "sentinels needs sentinel_service"),
    ({"redis_url": "redis://h:6379", "sentinel_service": "m"}, "sentinel_service apply only with sentinels"),
    ({"sentinels": ["h"], "sentinel_service": "m"}, "sentinels entry 'h' is not host:port"),
    ({"redis_url": "redis://h:6379", "ca_bundle": __file__}, "ca_bundle would not be used"),
    ({"cluster_nodes": ["h:7000"], "tls_server_name": "x"}, "use tls = true"),
    ({"redis_url": "redis://h:6379", "tls": True}, "for redis_url, TLS is rediss://"),
    ({"redis_url": "rediss://h:6379", "client_certificate": __file__}, "client_certificate and client_key go together"),
    ({"redis_url": "rediss://h:6379", "ca_bundle": __file__}, "cannot be loaded"),
    ({"redis_url": "redis://u:p@h:6379", "password": "q"}, "give the password once"),
    ({"redis_url": "redis://h:6379/x"}, "a path that is not a database number"),
    ({"redis_url": "redis://h:6379", "namespace": "{tokend}"}, "namespace"),
])
def test_fleet_settings_refused_with_a_sentence(settings: dict[str, object], said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        FleetConfig.model_validate({"encryption_key": FLEET_KEY, **settings})
    assert said in str(refused.value)
    assert ":p@" not in str(refused.value)


def test_fleet_settings_for_each_deployment() -> None:
    standalone = FleetConfig.model_validate({"encryption_key": FLEET_KEY, "redis_url": "redis://tokend:pw@h:6379/2"})
    assert standalone.mode == "standalone" and standalone.user == "tokend" and not standalone.data_tls
    assert standalone.secrets()[0].get() == "redis://tokend:pw@h:6379/2"
    sentinel = FleetConfig.model_validate({"encryption_key": FLEET_KEY, "sentinels": ["[::1]:26379", "h:26379"],
                                           "sentinel_service": "m", "tls": True, "username": "u"})
    assert sentinel.mode == "sentinel" and sentinel.data_tls and sentinel.user == "u"
    cluster = FleetConfig.model_validate({"encryption_key": FLEET_KEY, "cluster_nodes": ["h:7000"]})
    assert cluster.mode == "cluster" and cluster.user is None
