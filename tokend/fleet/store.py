"""The Redis calls of fleet mode, each bounded by a short timeout.

Keys, under the namespace `ns`:
    tokend:{ns}:token:{share key}   the provider's current record (tokend.fleet.envelope), expiring with the token
                                    (a user token's, holding its refresh token, lives longer: see REFRESH_KEPT)
    tokend:{ns}:lease:{share key}   the id of the daemon logging in for the fleet; expires unless renewed
    tokend:{ns}:failed:{share key}  the fleet's last failed login, encrypted, while the fleet holds off retrying
    tokend:{ns}:keys                key id -> Unix time last written with (a wrong key on a daemon shows up here)
Channel:
    tokend:{ns}:published           "{share key} {record}" after every login, and "{share key}" when a lease
                                    is let go without one (a failed login): waiters wake at once
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tokend.fleet.config import FleetConfig

log = logging.getLogger("tokend")

T = TypeVar("T")

MAX_KEY_IDS = 64  # key ids read from the fleet's hash: a rotation has two or three
_KEY_ID = re.compile(r"[0-9a-f]{16}")

# Let go of a lease only if this daemon still holds it, and tell the waiters.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# Extend a lease only if this daemon still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# A lease no daemon of ours set (no expiry, or one far beyond the lease length: a Redis writer's) is cut to
# the normal lease length, so that it lapses like a crashed holder's instead of stalling every login.
_REPAIR = ("local ttl = redis.call('PTTL', KEYS[2]) "
           "if ttl == -1 or ttl > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end")
# Take the lease if it is free.
_ACQUIRE = f"""
local won = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if not won then
  {_REPAIR}
end
return won and 1 or 0
"""
# One round trip for the common question at a renewal: the fleet's record, and, if it is still the one
# this daemon holds (ARGV[3]; '' if none), the lease to replace it, unless a login just failed (KEYS[3]).
_CLAIM = f"""
local record = redis.call('GET', KEYS[1])
if record and record ~= ARGV[3] then
  return {{record, 0, ''}}
end
local failed = redis.call('GET', KEYS[3])
if failed then
  return {{record or '', 0, failed}}
end
local won = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if not won then
  {_REPAIR}
end
return {{record or '', won and 1 or 0, ''}}
"""

# Compare and set: replace the record only if it is still ARGV[3] ('' for none), then tell the others. A user
# token's record holds its refresh token: replacing one that another daemon has replaced meanwhile would
# hand the fleet a refresh token the server has already seen spent.
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[4] .. ' ' .. ARGV[1])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
return 1
"""


class StoreError(Exception):
    """Redis failed, refused or did not answer in time. The text names no secret (never the URL)."""


class Store:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        url = config.redis_url.get()
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname or parts.path}{f':{parts.port}' if parts.port else ''}"
        self.prefix = f"tokend:{config.namespace}"
        self.channel = f"{self.prefix}:published"
        options: dict[str, Any] = {
            "socket_connect_timeout": config.connect_timeout,
            # One retry, at once, and only for a connection that failed: after Redis restarts, every pooled
            # connection is dead, and the first call on one would otherwise fail and cost `retry_after` seconds
            # of logging in alone. A timeout is not retried: it is answered by logging in alone, at once.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": 0,  # no PINGs while idle
            "decode_responses": True,
        }
        if config.password is not None:
            options["password"] = config.password.get()
        if parts.scheme == "rediss":
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            if config.ca_bundle is not None:
                options["ssl_ca_certs"] = str(config.ca_bundle)
        self._redis = aioredis.Redis.from_url(url, socket_timeout=config.timeout, **options)
        # Pub/sub has a connection of its own that waits without a read timeout: it is idle by design.
        self._subscriber = aioredis.Redis.from_url(url, socket_timeout=None, **options)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._claim = self._redis.register_script(_CLAIM)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._replace = self._redis.register_script(_REPLACE)
        self.calls = 0  # round trips to Redis so far (a pipeline or a script is one), for /metrics

    def token_key(self, share: str) -> str:
        return f"{self.prefix}:token:{share}"

    def lease_key(self, share: str) -> str:
        return f"{self.prefix}:lease:{share}"

    async def close(self) -> None:
        for client in (self._redis, self._subscriber):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        # redis-py bounds each read by `timeout` and a connect by `connect_timeout`; this bounds the whole.
        bound = self.config.timeout + self.config.connect_timeout
        try:
            async with asyncio.timeout(bound):
                return await call()
        except TimeoutError:
            raise StoreError(f"{what}: no answer from {self.where} within {bound:g}s") from None
        except (RedisError, OSError) as exc:
            raise StoreError(f"{what}: {self.where}: {_reason(exc)}") from None

    async def ping(self) -> None:
        await self._call("ping", lambda: self._redis.ping())

    async def read(self, shares: list[str]) -> list[str | None]:
        keys = [self.token_key(share) for share in shares]
        values = await self._call("read", lambda: self._redis.mget(keys))
        return [None if value is None else str(value) for value in values]

    def failed_key(self, share: str) -> str:
        return f"{self.prefix}:failed:{share}"

    async def claim(self, share: str, holder: str, expected: str) -> tuple[str | None, bool, str | None]:
        """The fleet's record; the lease, taken when the record is missing or is `expected`; and the fleet's
        last failed login, if one is being held off on (then no lease)."""
        lease_ms = int(self.config.lease * 1000)
        record, won, failed = await self._call("claim", lambda: self._claim(
            keys=[self.token_key(share), self.lease_key(share), self.failed_key(share)],
            args=[holder, lease_ms, expected]))
        return (record or None), bool(won), (failed or None)

    async def fail(self, share: str, failure: str, hold: float, holder: str) -> None:
        """Hold the fleet off logging in for `hold` seconds after a failed login, and let the lease go."""

        await self._call("record a failure", lambda: self._redis.set(
            self.failed_key(share), failure, px=max(1, int(hold * 1000))))
        await self.release(share, holder)

    async def acquire(self, share: str, holder: str) -> bool:
        lease_ms = int(self.config.lease * 1000)
        # KEYS[2], as in _CLAIM, so that both share _REPAIR.
        return bool(await self._call("lease", lambda: self._acquire(
            keys=[self.token_key(share), self.lease_key(share)], args=[holder, lease_ms])))

    async def renew(self, share: str, holder: str) -> bool:
        lease_ms = int(self.config.lease * 1000)
        return bool(await self._call("renew lease", lambda: self._renew(
            keys=[self.lease_key(share)], args=[holder, lease_ms])))

    async def release(self, share: str, holder: str) -> None:
        await self._call("release lease", lambda: self._release(
            keys=[self.lease_key(share), self.channel], args=[holder, share]))

    async def publish(self, share: str, record: str, expires_at: float, key_id: str) -> None:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))

        async def send() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self.token_key(share), record, px=ttl_ms)
                pipe.delete(self.failed_key(share))  # a login that worked holds no one off
                pipe.publish(self.channel, f"{share} {record}")
                pipe.hset(f"{self.prefix}:keys", key_id, int(time.time()))
                await pipe.execute()

        await self._call("publish", send)

    async def replace(self, share: str, record: str, keep_until: float, key_id: str, expected: str) -> bool:
        """Publish `record` only if the fleet's record is still `expected` ('' for none): False if not."""
        ttl_ms = max(1, int((keep_until - time.time()) * 1000))
        return bool(await self._call("replace", lambda: self._replace(
            keys=[self.token_key(share), self.channel, f"{self.prefix}:keys"],
            args=[record, ttl_ms, expected, share, key_id, int(time.time())])))

    async def key_ids(self) -> dict[str, int]:
        """Key id -> when last written with, for at most MAX_KEY_IDS of them (one page of HSCAN, should a Redis
        writer have filled the hash); entries that are not a key id and a time are skipped."""
        _, raw = await self._call("key ids", lambda: self._redis.hscan(f"{self.prefix}:keys", 0, count=MAX_KEY_IDS))
        pairs = [(str(kid), str(at)) for kid, at in raw.items()][:MAX_KEY_IDS] if isinstance(raw, dict) else []
        return {kid: int(at) for kid, at in pairs if _KEY_ID.fullmatch(kid) and at.isdigit() and len(at) <= 12}

    async def messages(self) -> AsyncIterator[tuple[str, str | None]]:
        """(share key, record or None) for every message on the channel, until the connection fails
        (StoreError). Subscribing is bounded by the timeout; waiting for messages is not."""
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call("subscribe", lambda: pubsub.subscribe(self.channel))
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except (RedisError, OSError) as exc:
                    raise StoreError(f"subscription: {self.where}: {_reason(exc)}") from None
                if message is None or message.get("type") != "message":
                    continue
                share, _, record = str(message["data"]).partition(" ")
                yield share, record or None
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


def _reason(exc: BaseException) -> str:
    # redis-py's messages name the host and port, never the password; the class name says what kind.
    text = str(exc).split("\n")[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
