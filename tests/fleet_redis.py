"""Real Redis deployments for the fleet tests, each on free ports in a directory of its own: a redis-server
(started and stopped, or killed and started again on the same port, by the test), a primary with a replica and
three redis-sentinel processes, and a Cluster of three primaries made with `redis-cli --cluster create`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from tests.daemon import free_port
from tests.tools import DEBIAN, require_tool


def fleet_key(namespace: str, share: str, kind: str) -> str:
    """The name of a provider's key in the fleet's Redis (tokend.fleet.store): kind is token, lease or failed."""
    return f"tokend:{namespace}:{{{share}}}:{kind}"


class RedisServer:
    def __init__(self, directory: Path, *, tls: tuple[Path, Path, Path] | None = None,
                 client_certificates: bool = False, args: Sequence[str] = ()) -> None:
        """`tls`: (certificate, key, CA) to listen with TLS only; `client_certificates`: and require a client
        certificate signed by that CA. `args`: more redis-server options (`--replicaof`, `--user`, ...)."""
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.client_certificates = client_certificates
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = require_tool("redis-server", f"{DEBIAN} redis-server")
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                     str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients",
                     "yes" if self.client_certificates else "no"]
        self.process = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError(f"redis-server did not start on {self.port} (see {self.directory / 'redis.log'})")

    def client(self) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 2, "decode_responses": True}
        if self.tls is not None:
            options["ssl_ca_certs"] = str(self.tls[2])
            if self.client_certificates:  # the server's own pair, signed by the same CA, serves as a client's
                options.update(ssl_certfile=str(self.tls[0]), ssl_keyfile=str(self.tls[1]))
        return redis.Redis.from_url(self.url, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def everything(self) -> dict[str, str]:
        """Every key and its value (strings as they are, hashes and others as their printed contents)."""
        client = self.client()
        out = {}
        for key in client.scan_iter("*"):
            kind = client.type(key)
            if kind == "string":
                out[key] = str(client.get(key))
            elif kind == "hash":
                out[key] = repr(client.hgetall(key))
            else:
                out[key] = kind
        return out

    def commands_processed(self) -> int:
        return int(self.client().info("stats")["total_commands_processed"])


class SentinelSet:
    """A primary, one replica and three sentinels watching them as service `tokend` (quorum 2), with short
    timeouts so that a failover takes seconds."""

    SERVICE = "tokend"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary = RedisServer(directory / "redis-a")
        self.replica = RedisServer(directory / "redis-b", args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.servers = [self.primary, self.replica]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self) -> SentinelSet:
        binary = require_tool("redis-sentinel", f"{DEBIAN} redis-sentinel")
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication").get("master_link_status") == "up",
                   "the replica to sync")
        for index, port in enumerate(self.sentinel_ports):
            folder = self.directory / f"sentinel-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 4000\n")
            self.sentinels.append(subprocess.Popen([binary, str(folder / "sentinel.conf")],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: all(self._sentinel_sees_all(port) for port in self.sentinel_ports),
                   "every sentinel to see the replica and the other sentinels")
        return self

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def _sentinel_sees_all(self, port: int) -> bool:
        try:
            state = self.sentinel(port).sentinel_master(self.SERVICE)
        except redis.RedisError:
            return False
        return int(state.get("num-slaves", 0)) >= 1 and int(state.get("num-other-sentinels", 0)) >= 2

    def primary_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                return int(self.sentinel(port).sentinel_get_master_addr_by_name(self.SERVICE)[1])
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no sentinel names a primary")

    def current_primary(self) -> RedisServer:
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def failover(self) -> RedisServer:
        """SENTINEL FAILOVER, then wait until the sentinels name the new primary and it takes writes."""
        before = self.primary_port()
        self.sentinel(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", self.SERVICE)
        return self.wait_for_new_primary(before)

    def kill_primary(self) -> RedisServer:
        """Kill the primary: the sentinels find it down and promote the replica."""
        before = self.current_primary()
        before.kill()
        return self.wait_for_new_primary(before.port)

    def wait_for_new_primary(self, old_port: int) -> RedisServer:
        wait_until(lambda: self.primary_port() != old_port, "the sentinels to name a new primary", timeout=30)
        new = self.current_primary()
        wait_until(lambda: new.client().info("replication").get("role") == "master", "the new primary", timeout=30)
        return new

    def kill(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for server in self.servers:
            server.kill()


class Cluster:
    """Three primaries (and `replicas` replicas of each), made into a Cluster by `redis-cli --cluster create`.
    `tls`: (certificate, key, CA): every node listens with TLS only, and the nodes speak TLS to each other."""

    def __init__(self, directory: Path, count: int = 3, replicas: int = 0,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.replicas = replicas
        self.tls = tls
        self.nodes = [RedisServer(directory / f"node-{index}", tls=tls) for index in range(count)]
        for node in self.nodes:
            node.args = ["--cluster-enabled", "yes", "--cluster-config-file", str(node.directory / "nodes.conf"),
                         "--cluster-node-timeout", "2000", "--cluster-port", str(free_port())]
            if tls is not None:
                node.args += ["--tls-cluster", "yes", "--tls-replication", "yes"]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self) -> Cluster:
        cli = require_tool("redis-cli", f"{DEBIAN} redis-tools")
        for node in self.nodes:
            node.start()
        tls = [] if self.tls is None else ["--tls", "--cacert", str(self.tls[2])]
        subprocess.run([cli, *tls, "--cluster", "create", *self.addresses, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(node.client().cluster("info")["cluster_state"] == "ok" for node in self.nodes),
                   "the cluster to be ok")
        return self

    def client(self) -> redis.RedisCluster:
        tls = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls[2])}
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True, socket_timeout=2,
                                  **tls)

    def keys(self) -> dict[str, list[str]]:
        """Node address -> the keys it holds."""
        return {f"127.0.0.1:{node.port}": sorted(node.client().scan_iter("*")) for node in self.nodes}

    def move_slot_of(self, key: str) -> tuple[str, str]:
        """Migrate the slot of `key` to another primary, as `redis-cli --cluster reshard` does (IMPORTING,
        MIGRATING, MIGRATE each key, SETSLOT NODE everywhere): (from, to) node addresses."""
        clients = {node.port: node.client() for node in self.nodes}
        first = next(iter(clients.values()))
        slot = int(first.cluster("keyslot", key))
        ids = {port: str(client.cluster("myid")) for port, client in clients.items()}
        owner = self._owner(slot)
        target = next(port for port in clients if port != owner)
        clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
        clients[owner].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := clients[owner].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            clients[owner].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for client in clients.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        return f"127.0.0.1:{owner}", f"127.0.0.1:{target}"

    def _owner(self, slot: int) -> int:
        for start, end, primary, *_ in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def kill_a_primary(self) -> None:
        """Kill one primary; wait until its replica took over and the cluster is ok again."""
        primary = next(node for node in self.nodes if node.client().info("replication")["role"] == "master")
        primary.kill()
        alive = [node for node in self.nodes if node is not primary]
        wait_until(lambda: all(node.client().cluster("info")["cluster_state"] == "ok" for node in alive),
                   "the cluster to promote a replica", timeout=30)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def wait_until(condition: object, what: str, *, timeout: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
