"""The Redis calls of fleet mode, each bounded by a short timeout.

Keys, under the namespace NS, for a provider whose share key is SHARE (tokend.fleet.envelope):
    tokend:NS:{SHARE}:token     the provider's current record, expiring with the token (a user token's, holding
                                its refresh token, lives longer: see REFRESH_KEPT)
    tokend:NS:{SHARE}:lease     the id of the daemon logging in for the fleet; expires unless renewed
    tokend:NS:{SHARE}:failed    the fleet's last failed login, encrypted, while the fleet holds off retrying
    tokend:NS:{SHARE}:intent    "GENERATION SPENDER": the user token's generation a daemon is about to spend, written
                                (and acknowledged by a replica, when there is one) before its refresh token is sent
    tokend:NS:keys              key id -> Unix time last written with (a wrong key on a daemon shows up here)
Channel:
    tokend:NS:published         "SHARE RECORD" after every login, and "SHARE" when a lease is let go without one
                                (a failed login): waiters wake at once

`{SHARE}` is a Redis Cluster hash tag: a provider's keys live in one slot, so each script below touches one slot
(the same layout in every mode, so a fleet can move from one Redis to a Cluster), and the providers spread over
the cluster. Every name starts with `tokend:NS:`, the one ACL key and channel pattern a fleet user needs. The
channel is never a script key: scripts publish to it by name (ARGV), which Redis allows in every mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from tokend.fleet.config import FleetConfig
from tokend.fleet.deployment import Deployment

log = logging.getLogger("tokend")

T = TypeVar("T")

MAX_KEY_IDS = 64  # key ids read from the fleet's hash: a rotation has two or three
KEY_ID_NOTED = 60.0  # seconds: how often a daemon writes its key id's time (days are what a reader looks at)
INTENT_WAIT = 0.5  # seconds: at most this long for a replica to acknowledge an intent (WAIT 1 <ms>)
_KEY_ID = re.compile(r"[0-9a-f]{16}")

# Let go of a lease only if this daemon still holds it, and tell the waiters.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
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
# The failure is read whatever the record: a record this daemon does not hold never skips the fleet's hold.
_CLAIM = f"""
local record = redis.call('GET', KEYS[1])
local failed = redis.call('GET', KEYS[3])
if failed then
  return {{record or '', 0, failed}}
end
if record and record ~= ARGV[3] then
  return {{record, 0, ''}}
end
local won = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if not won then
  {_REPAIR}
end
return {{record or '', won and 1 or 0, ''}}
"""

# A new record (not a user token's): write it, clear a failure (a login that worked holds no one off), and
# tell the others on channel ARGV[3].
_PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
return 1
"""
# Compare and set: replace the record only if it is still ARGV[3] ('' for none), then tell the others (on
# channel ARGV[5]). A user token's record holds its refresh token: replacing one that another daemon has replaced
# meanwhile would hand the fleet a refresh token the server has already seen spent.
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[4] .. ' ' .. ARGV[1])
return 1
"""
# Before a user token's refresh token is sent: refuse (return the intent found) if another spender (ARGV[2])
# has said it would spend this generation (ARGV[1]) or a later one, else say so ourselves, for ARGV[3] ms.
_INTENT = """
local prior = redis.call('GET', KEYS[1])
if prior then
  local generation, spender = string.match(prior, '^(%-?%d+) (%S+)$')
  if generation and tonumber(generation) >= tonumber(ARGV[1]) and spender ~= ARGV[2] then
    return prior
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return ''
"""
# A login that failed at the server spent nothing: its intent goes, if it is still this spender's.
_FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Before the keys carried a hash tag, a provider's record was tokend:NS:token:SHARE. Copied once to its new
# name (only where none is there yet), so that a fleet upgraded in place keeps its refresh tokens. Not in a
# Cluster, where the old names could never be written.
_CARRY_OVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local old = redis.call('GET', KEYS[2])
  local ttl = redis.call('PTTL', KEYS[2])
  if old and ttl > 0 then
    redis.call('SET', KEYS[1], old, 'PX', ttl)
    return 1
  end
end
return 0
"""
# Answers that mean the call reached a node that is no longer (or not yet) the primary for its keys.
_MOVED = (ReadOnlyError, MovedError, AskError, TryAgainError, ClusterDownError, MasterDownError,
          RedisConnectionError, ConnectionResetError, BrokenPipeError)
_MOVED_PREFIXES = ("READONLY", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING")


class StoreError(Exception):
    """Redis failed, refused or did not answer in time. The text names no secret (never the URL).
    `certificate`: the server's TLS certificate could not be verified."""

    def __init__(self, message: str, *, certificate: bool = False) -> None:
        super().__init__(message)
        self.certificate = certificate


class NotReplicated(StoreError):
    """The primary has replicas, and none acknowledged an intent in time: do not spend, try again later."""


class _Moved(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Store:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.deployment = Deployment(config)
        self.where = self.deployment.where
        self.prefix = f"tokend:{config.namespace}"
        self.channel = f"{self.prefix}:published"
        self._redis = self.deployment.redis
        self._subscriber = self.deployment.subscriber
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._claim = self._redis.register_script(_CLAIM)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._replace = self._redis.register_script(_REPLACE)
        self._carry_over = self._redis.register_script(_CARRY_OVER)
        self._publish = self._redis.register_script(_PUBLISH)
        self._intent = self._redis.register_script(_INTENT)
        self._forget = self._redis.register_script(_FORGET)
        self._key_id_noted: dict[str, float] = {}  # key id -> when this daemon last wrote it to the keys hash
        self._carried: set[str] = set()  # share keys whose old-named record has been looked for
        self._finding: asyncio.Task[None] | None = None  # the one search for a moved primary, shared
        self.calls = 0  # round trips to Redis so far (a pipeline or a script is one), for /metrics

    def token_key(self, share: str) -> str:
        return f"{self.prefix}:{{{share}}}:token"

    def lease_key(self, share: str) -> str:
        return f"{self.prefix}:{{{share}}}:lease"

    def failed_key(self, share: str) -> str:
        return f"{self.prefix}:{{{share}}}:failed"

    def intent_key(self, share: str) -> str:
        return f"{self.prefix}:{{{share}}}:intent"

    @property
    def keys_key(self) -> str:
        return f"{self.prefix}:keys"

    async def close(self) -> None:
        if self._finding is not None:
            self._finding.cancel()
        await self.deployment.close()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, bounded; once more after finding the primary again if the answer says it moved. Whatever
        the Redis layer raises becomes a StoreError: the daemon then logs in alone, never fails the login."""
        self.calls += 1
        try:
            return await self._bounded(what, call)
        except _Moved as moved:
            await self._find_primary()
            self.calls += 1
            try:
                return await self._bounded(what, call)
            except _Moved as again:
                raise StoreError(f"{what}: {self.where}: {again.reason} (after finding the primary again, "
                                 f"first: {moved.reason})") from None

    async def _bounded(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        # redis-py bounds each read by `timeout` and a connect by `connect_timeout`; this bounds the whole.
        bound = self.config.timeout + self.config.connect_timeout
        try:
            async with asyncio.timeout(bound):
                return await call()
        except TimeoutError:
            raise StoreError(f"{what}: no answer from {self.where} within {bound:g}s") from None
        except Exception as exc:  # any failure of the Redis layer is a Redis failure
            certificate = _certificate(exc)
            if not certificate and _moved(exc, self.config.mode):
                raise _Moved(_reason(exc)) from None
            raise StoreError(f"{what}: {self.where}: {_reason(exc)}", certificate=certificate) from None

    async def _find_primary(self) -> None:
        """One search at a time, which every call that found the primary gone waits for."""
        if self._finding is None or self._finding.done():
            deadline = time.monotonic() + self.config.failover_timeout
            self._finding = asyncio.create_task(self.deployment.find_primary(deadline), name="tokend-fleet-primary")
        with contextlib.suppress(Exception):
            await asyncio.shield(self._finding)

    async def ping(self) -> None:
        await self._call("ping", lambda: self._redis.ping())

    async def reached(self) -> str:
        """Which primary or nodes the last call reached, in words (for `tokend check`)."""
        return await self._call("find the primary", self.deployment.reached)

    async def read(self, shares: list[str]) -> list[str | None]:
        keys = [self.token_key(share) for share in shares]
        # Each provider's keys have a slot of their own: in a Cluster, one GET per slot.
        mget = self._redis.mget_nonatomic if isinstance(self._redis, RedisCluster) else self._redis.mget
        values = await self._call("read", lambda: mget(keys))
        return [None if value is None else str(value) for value in values]

    async def claim(self, share: str, holder: str, expected: str) -> tuple[str | None, bool, str | None]:
        """The fleet's record; the lease, taken when the record is missing or is `expected`; and the fleet's
        last failed login, if one is being held off on (then no lease)."""
        lease_ms = int(self.config.lease * 1000)
        if share not in self._carried:
            await self._carry_over_record(share)
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
            keys=[self.lease_key(share)], args=[holder, share, self.channel]))

    async def publish(self, share: str, record: str, expires_at: float, key_id: str) -> None:
        ttl_ms = max(1, int((expires_at - time.time()) * 1000))

        await self._call("publish", lambda: self._publish(
            keys=[self.token_key(share), self.failed_key(share)], args=[record, ttl_ms, self.channel, share]))
        await self._note_key_id(key_id)

    async def replace(self, share: str, record: str, keep_until: float, key_id: str, expected: str) -> bool:
        """Publish `record` only if the fleet's record is still `expected` ('' for none): False if not."""
        ttl_ms = max(1, int((keep_until - time.time()) * 1000))
        replaced = bool(await self._call("replace", lambda: self._replace(
            keys=[self.token_key(share)], args=[record, ttl_ms, expected, share, self.channel])))
        if replaced:
            await self._note_key_id(key_id)
        return replaced

    async def intend(self, share: str, generation: int, spender: str, keep_ms: int) -> str | None:
        """Say that `spender` is about to spend `generation`'s refresh token, and make sure a replica has it
        before that happens: the intent another spender left for this generation or a later one (then nothing
        is written, and the refresh token must not be sent), else None. Raises NotReplicated when the primary
        has replicas and none acknowledged the intent in time: a failover could then lose it."""
        intent_key = self.intent_key(share)

        async def write() -> tuple[str, int]:
            # One connection for both: WAIT counts the writes made on its own connection.
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._intent(keys=[intent_key], args=[generation, spender, keep_ms],
                                   client=pipe)  # type: ignore[arg-type]  # a pipeline queues it
                pipe.execute_command("WAIT", 1, self._wait_ms)
                prior, acknowledged = await pipe.execute()
            return str(prior or ""), int(acknowledged)

        if isinstance(cluster := self._redis, RedisCluster):
            prior, acknowledged = await self._call("intent", lambda: self._intend_on_primary(
                cluster, intent_key, [generation, spender, keep_ms]))
        else:
            prior, acknowledged = await self._call("intent", write)
        if prior:
            return prior
        if acknowledged == 0 and await self._replicas(intent_key) > 0:
            raise NotReplicated(f"intent: no replica of {self.where} acknowledged it within {self._wait_ms}ms")
        return None

    async def _intend_on_primary(self, cluster: RedisCluster, key: str, args: list[object]) -> tuple[str, int]:
        """The intent script and WAIT on one connection to the primary of `key`'s slot: a cluster client sends
        each command on whichever of its connections is free, and WAIT on one that wrote nothing counts every
        replica at once. A primary that has not seen the script yet is given it, then asked again."""
        await cluster.initialize()  # the slots known, as the client's own first command would learn them
        node = cluster.get_node_from_key(key)
        if node is None:
            raise ClusterDownError(f"no node serves the slot of {key}")
        for loaded in (False, True):
            commands = [PipelineCommand(0, "EVALSHA", self._intent.sha, 1, key, *args),
                        PipelineCommand(1, "WAIT", 1, self._wait_ms)]
            await node.execute_pipeline(commands)
            written, acknowledged = (command.result for command in commands)
            if isinstance(written, NoScriptError) and not loaded:
                await cluster.execute_command("SCRIPT LOAD", self._intent.script, target_nodes=node)
                continue
            for result in (written, acknowledged):
                if isinstance(result, BaseException):
                    raise result
            break
        return str(written or ""), int(str(acknowledged))

    async def forget(self, share: str, generation: int, spender: str) -> None:
        await self._call("forget intent", lambda: self._forget(
            keys=[self.intent_key(share)], args=[f"{generation} {spender}"]))

    @property
    def _wait_ms(self) -> int:
        return max(1, int(min(INTENT_WAIT, self.config.timeout / 2) * 1000))

    async def _replicas(self, key: str) -> int:
        if isinstance(cluster := self._redis, RedisCluster):
            info = await self._call("replicas", lambda: cluster.info(
                "replication", target_nodes=cluster.get_node_from_key(key)))
        else:
            info = await self._call("replicas", lambda: self._redis.info("replication"))
        return int(info.get("connected_slaves", 0)) if isinstance(info, dict) else 0

    async def _note_key_id(self, key_id: str) -> None:
        """Another slot than the records': a call of its own, made at most every KEY_ID_NOTED seconds."""
        now = time.time()
        if now - self._key_id_noted.get(key_id, 0.0) >= KEY_ID_NOTED:
            await self._call("note the key id", lambda: self._redis.hset(self.keys_key, key_id, int(now)))
            self._key_id_noted[key_id] = now

    async def _carry_over_record(self, share: str) -> None:
        if self.config.mode != "cluster":
            await self._call("carry over", lambda: self._carry_over(
                keys=[self.token_key(share), f"{self.prefix}:token:{share}"], args=[]))
        self._carried.add(share)

    async def key_ids(self) -> dict[str, int]:
        """Key id -> when last written with, for at most MAX_KEY_IDS of them (one page of HSCAN, should a Redis
        writer have filled the hash); entries that are not a key id and a time are skipped."""
        _, raw = await self._call("key ids", lambda: self._redis.hscan(self.keys_key, 0, count=MAX_KEY_IDS))
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
                except Exception as exc:  # any failure of the Redis layer is a Redis failure
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


def _moved(exc: BaseException, mode: str) -> bool:
    """Whether `exc` says the primary moved (or is moving): a reason to find it again, not a failure. A
    standalone Redis that cannot be reached has nowhere else to be (redis-py already reconnected once)."""
    if isinstance(exc, (RedisConnectionError, OSError)) and mode == "standalone":
        return False
    if isinstance(exc, _MOVED):
        return True
    return isinstance(exc, ResponseError) and str(exc).lstrip("-").startswith(_MOVED_PREFIXES)


def _certificate(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is a failed verification of the server's TLS certificate."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
