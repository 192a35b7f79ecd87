"""How the fleet reaches Redis: one standalone server, a primary found through Sentinel, or a Cluster; each
with redis-py's own client for it, and TLS (server verification, a client certificate, the name checked) with
the one SSL context tokend.fleet.config builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tokend.fleet.config import FleetConfig, parse_address, tls_context

__all__ = ["Deployment"]

_FIND_EVERY = 0.2  # seconds between looks for a new primary during a failover


def _tls_connection(base: type[Connection], context: ssl.SSLContext, server_name: str | None) -> type[Connection]:
    """`base` (a plain or a Sentinel-managed connection) over TLS with `context`, checking `server_name` (or
    the host connected to) in the server's certificate."""

    class TLSConnection(base):  # type: ignore[valid-type,misc]
        def _connection_arguments(self) -> Mapping[str, Any]:
            arguments = {**super()._connection_arguments(), "ssl": context}
            if server_name is not None:
                arguments["server_hostname"] = server_name
            return arguments

    return TLSConnection


class Deployment:
    """The command client, a subscriber client (no read timeout: pub/sub waits by design), and how to find
    the primary again after it moved."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.mode = config.mode
        self._context = tls_context(config) if config.data_tls or config.sentinel_tls else None
        common: dict[str, Any] = {
            "socket_connect_timeout": config.connect_timeout,
            # One retry, at once, and only for a connection that failed: after Redis restarts, every pooled
            # connection is dead, and the first call on one would otherwise fail and cost `retry_after` seconds
            # of logging in alone. A timeout is not retried: it is answered by logging in alone, at once.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": 0,  # no PINGs while idle
            "decode_responses": True,
            "username": config.user,
        }
        if config.password is not None:
            common["password"] = config.password.get()
        self._sentinel: Sentinel | None = None
        self.redis: aioredis.Redis | RedisCluster
        self.subscriber: aioredis.Redis | RedisCluster
        if self.mode == "standalone":
            self.where, self.redis, self.subscriber = self._standalone(common)
        elif self.mode == "sentinel":
            self.where, self.redis, self.subscriber = self._sentinels(common)
        else:
            self.where, self.redis, self.subscriber = self._cluster(common)

    # --- building the clients ----------------------------------------------------------------------------

    def _standalone(self, common: dict[str, Any]) -> tuple[str, aioredis.Redis, aioredis.Redis]:
        assert self.config.redis_url is not None
        parts = urlsplit(self.config.redis_url.get())
        options = dict(common)
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password:
            options["password"] = unquote(parts.password)
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        query_db = dict(pair.split("=", 1) for pair in parts.query.split("&") if pair.startswith("db="))
        options["db"] = int(query_db.get("db") or db or 0)
        if parts.scheme == "unix":
            options.update(connection_class=UnixDomainSocketConnection, path=unquote(parts.path))
            where = f"unix://{unquote(parts.path)}"
        else:
            options.update(host=parts.hostname or "localhost", port=parts.port or 6379)
            if parts.scheme == "rediss":
                assert self._context is not None
                options["connection_class"] = _tls_connection(Connection, self._context, self.config.tls_server_name)
            where = f"{parts.scheme}://{_host(options['host'])}:{options['port']}"

        def client(read_timeout: float | None) -> aioredis.Redis:
            return aioredis.Redis(connection_pool=ConnectionPool(socket_timeout=read_timeout, **options))

        return where, client(self.config.timeout), client(None)

    def _sentinels(self, common: dict[str, Any]) -> tuple[str, aioredis.Redis, aioredis.Redis]:
        config = self.config
        assert config.sentinel_service is not None
        addresses = [parse_address(entry, "sentinels") for entry in config.sentinels]
        sentinel_options: dict[str, Any] = {
            "socket_connect_timeout": config.connect_timeout, "socket_timeout": config.timeout,
            "decode_responses": True, "username": config.sentinel_username,
            "password": config.sentinel_password.get() if config.sentinel_password else None,
        }
        if config.sentinel_tls:
            assert self._context is not None
            sentinel_options["connection_class"] = _tls_connection(Connection, self._context, config.tls_server_name)
        data = dict(common)
        if config.tls:
            assert self._context is not None
            data["connection_class"] = _tls_connection(SentinelManagedConnection, self._context,
                                                       config.tls_server_name)
        sentinel = Sentinel([], **data)
        # Each sentinel's client is built here, so that its connections can be TLS with this context.
        sentinel.sentinels = [aioredis.Redis(connection_pool=ConnectionPool(host=host, port=port, **sentinel_options))
                              for host, port in addresses]
        self._sentinel = sentinel
        scheme = "rediss" if config.tls else "redis"
        where = f"sentinel {config.sentinel_service} via {', '.join(config.sentinels)} ({scheme})"
        return (where, sentinel.master_for(config.sentinel_service, socket_timeout=config.timeout),
                sentinel.master_for(config.sentinel_service, socket_timeout=None))

    def _cluster(self, common: dict[str, Any]) -> tuple[str, RedisCluster, RedisCluster]:
        config = self.config
        options = {key: value for key, value in common.items() if key != "retry"}

        def client(read_timeout: float | None) -> RedisCluster:
            nodes = [ClusterNode(*parse_address(entry, "cluster_nodes")) for entry in config.cluster_nodes]
            cluster = RedisCluster(startup_nodes=nodes, socket_timeout=read_timeout, **options)
            if config.tls:
                assert self._context is not None
                tls = _tls_connection(Connection, self._context, config.tls_server_name)
                # redis-py builds each node it discovers from these arguments, the startup nodes included.
                cluster.connection_kwargs["connection_class"] = tls
                for node in cluster.startup_nodes:
                    node.connection_class = tls
            return cluster

        where = f"cluster {', '.join(config.cluster_nodes)} ({'rediss' if config.tls else 'redis'})"
        return where, client(config.timeout), client(None)

    # --- following the primary ---------------------------------------------------------------------------

    async def find_primary(self, deadline: float) -> None:
        """After an answer that says the primary moved (READONLY, MOVED, a connection reset or refused): drop
        the pooled connections and, for Sentinel and Cluster, wait until a primary answers again (a failover
        takes the sentinels or the cluster a few seconds), or until `deadline` (time.monotonic)."""
        if self.mode == "standalone" and isinstance(self.redis, aioredis.Redis):
            await self.redis.connection_pool.disconnect()  # a new connection resolves the name again
            return
        deadline = min(deadline, time.monotonic() + self.config.failover_timeout)
        while True:
            with contextlib.suppress(Exception):
                if await self._primary_answers():
                    return
            if time.monotonic() + _FIND_EVERY >= deadline:
                return  # the caller's retry fails and says why
            await asyncio.sleep(_FIND_EVERY)

    async def _primary_answers(self) -> bool:
        left = max(0.1, self.config.timeout + self.config.connect_timeout)
        async with asyncio.timeout(left):
            if isinstance(self.redis, RedisCluster):
                await self.redis.nodes_manager.initialize()
                await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
                return True
            await self.redis.connection_pool.disconnect()
            return bool(await self.redis.ping())

    async def reached(self) -> str:
        """What a call just reached, in words, for `tokend check`."""
        if isinstance(self.redis, RedisCluster):
            primaries = sorted(node.name for node in self.redis.get_primaries())
            return f"Cluster: {len(primaries)} primaries ({', '.join(primaries)})"
        if self._sentinel is not None:
            assert self.config.sentinel_service is not None
            host, port = await self._sentinel.discover_master(self.config.sentinel_service)
            return (f"Sentinel service {self.config.sentinel_service}: primary at {_host(host)}:{port}, found "
                    f"through {', '.join(self.config.sentinels)}")
        return f"standalone Redis at {self.where}"

    def tls_described(self) -> str:
        config = self.config
        if self._context is None:
            return "without TLS"
        against = f"ca_bundle {config.ca_bundle}" if config.ca_bundle else "the system's trusted CAs"
        name = f", name {config.tls_server_name}" if config.tls_server_name else ", name the host connected to"
        client = f", client certificate {config.client_certificate}" if config.client_certificate else ""
        to = ("to the sentinels and the data nodes" if config.sentinel_tls and config.tls
              else "to the sentinels only" if config.sentinel_tls and not config.tls else "")
        return f"TLS{' ' + to if to else ''}, server certificate verified against {against}{name}{client}"

    async def close(self) -> None:
        for client in (self.redis, self.subscriber, *(self._sentinel.sentinels if self._sentinel else [])):
            with contextlib.suppress(Exception):
                await client.aclose()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
