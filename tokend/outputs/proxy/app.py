"""The proxy as an ASGI app: check the request, add the credential, forward it, stream the answer back.

`ProxyApp` serves `/proxy/{name}/{path}` on the daemon's own listener (`provider=None`), or every path of a
provider's own listener (`provider="name"`). For each request:

1. the request checks (those of /token, handed in as `check`), then the provider and its proxy settings;
2. the path (see tokend.outputs.proxy.paths: what could leave the origin is refused with 400);
3. a servable credential, or 503 token_unavailable without contacting the upstream;
4. the body: up to `proxy_retry_body_limit` is read first and kept, so the request can be sent twice;
   a larger or longer one is streamed upstream as it arrives and cannot be (an AWS provider's request is
   signed instead of given headers, see tokend.outputs.proxy.aws: its kept body's hash is signed);
5. the exchange, on a pooled keep-alive connection; a 401 asks for a new token naming the one sent (one
   refresh for all the requests that failed with it), then the kept request is sent once more with it;
6. the answer streamed back chunk by chunk (server-sent events arrive as they are sent), while a watcher
   cancels everything if the client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Receive, Scope, Send

import tokend.outputs.proxy.headers as header_rules
from tokend.api.guard import Denial
from tokend.credential import Credential
from tokend.errors import TokendError, TokenUnavailable, UnknownProvider
from tokend.outputs.proxy.paths import BadPath, Origin, request_target, with_query
from tokend.outputs.proxy.pool import Answer, Connection, Pool, UpstreamFailure
from tokend.outputs.proxy.stats import ProxyStats

if TYPE_CHECKING:
    from tokend.outputs.proxy.aws import AwsSigning

__all__ = ["Check", "Credentials", "ProxyApp"]

log = logging.getLogger("tokend")

PREFIX = b"/proxy/"
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
WATCH_AFTER = 0.05  # seconds before a request's client is watched for a hang-up; see _Watch


class ProxySettings(Protocol):
    """What the proxy reads of a provider's settings (every provider kind's model has these)."""

    @property
    def proxy(self) -> bool: ...
    @property
    def proxy_target(self) -> str | None: ...
    @property
    def proxy_retry_body_limit(self) -> int: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def proxy_sigv4(self) -> tuple[str, str] | None: ...


class Credentials(Protocol):
    """Where the proxy gets credentials from (the manager)."""

    def current(self, name: str, now: float) -> Credential | None: ...
    async def get(self, name: str) -> Credential: ...
    async def refresh(self, name: str, rejected: str | None = None) -> Credential: ...
    def provider_config(self, name: str) -> ProxySettings: ...


# The request checks of /token for one provider (None: before the provider is known): None to let the
# request through, else why not.
Check = Callable[[Scope, str | None], Denial | None]

_NO_STORE = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


@dataclass(frozen=True)
class _Route:
    """A provider's proxy settings, worked out once per config (a reload brings a new config object)."""

    config: ProxySettings
    origin: Origin | None  # None: proxying is off for this provider
    body_limit: int
    connect_timeout: float
    read_timeout: float
    aws: AwsSigning | None  # requests signed with AWS Signature Version 4, not given the credential's headers

    @classmethod
    def of(cls, config: ProxySettings) -> _Route:
        target = config.proxy_target if config.proxy else None
        origin = Origin.from_url(target) if target is not None else None
        read_timeout = config.read_timeout or config.timeout
        aws = None
        if (sigv4 := config.proxy_sigv4) is not None:
            # Imported here: the signer is for a daemon that proxies for an AWS provider, not every daemon.
            from tokend.outputs.proxy.aws import AwsSigning

            aws = AwsSigning(*sigv4)
        return cls(config, origin, config.proxy_retry_body_limit, config.connect_timeout, read_timeout, aws)


@dataclass(frozen=True)
class _Prepared:
    """A credential's additions, encoded once: the header lines and the query parameters."""

    credential: Credential
    origin: Origin
    head: bytes
    dropped: frozenset[bytes]  # the client's headers never forwarded with it
    unsendable: str | None = None  # why this credential cannot go in a request head, if it cannot

    @classmethod
    def of(cls, name: str, credential: Credential, origin: Origin, *, signed: bool = False) -> _Prepared:
        dropped = header_rules.never_out(credential.headers)
        if signed:  # the client's own signature (an SDK given dummy keys) goes; the proxy signs anew
            dropped |= header_rules.AWS_SIGNATURE
            if credential.aws is None:
                return cls(credential, origin, b"", dropped, f"The credential of {name} holds no AWS keys to sign "
                           "requests with.")
        lines = [b"host: " + origin.host_header + b"\r\n"]
        try:
            # HTTP/1.1 field values are bytes, which the proxy writes as Latin-1: a token outside it (GET /token
            # hands it over as JSON) has no byte form an upstream would read as the provider meant it.
            lines += [f"{key}: {value}\r\n".encode("latin-1") for key, value in credential.headers.items()]
        except UnicodeEncodeError:
            reason = (f"The credential of {name} holds a character outside Latin-1, which a request header cannot "
                      f"carry: the proxy cannot send it (GET /token/{name} still serves it).")
            return cls(credential, origin, b"", dropped, reason)
        return cls(credential, origin, b"".join(lines), dropped)


class _Body:
    """The request body: kept whole when it fits the limit (`replayable`), else streamed from `receive`."""

    __slots__ = ("first", "length", "more", "receive", "replayable")

    def __init__(self, first: list[bytes], more: bool, length: int | None, receive: Receive) -> None:
        self.first, self.more, self.length, self.receive = first, more, length, receive
        self.replayable = not more  # decided once: streaming the rest does not make it kept

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, limit: int) -> _Body:
        length = _content_length(scope)
        first: list[bytes] = []
        size, more = 0, True
        if length is not None and length > limit:
            return cls(first, more, length, receive)
        while more and size <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            if chunk := message.get("body", b""):
                first.append(chunk)
                size += len(chunk)
            more = message.get("more_body", False)
        return cls(first, more, length, receive)

    def framing(self, method: str) -> bytes:
        if self.replayable:
            size = sum(map(len, self.first))
            if size == 0 and method in ("GET", "HEAD", "DELETE", "OPTIONS"):
                return b""  # no body, and a method that needs none: no framing at all
            return b"content-length: %d\r\n" % size
        if self.length is not None:
            return b"content-length: %d\r\n" % self.length
        return b"transfer-encoding: chunked\r\n"

    async def send(self, conn: Connection) -> None:
        """The rest of a streamed body, from the client to the upstream, one piece at a time."""
        put = conn.send_chunk if self.length is None else conn.send
        for chunk in self.first:
            await put(chunk)
        while self.more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            if chunk := message.get("body", b""):
                await put(chunk)
            self.more = message.get("more_body", False)
        if self.length is None:
            await conn.send(b"0\r\n\r\n")


class _ClientGone(Exception):
    """The client hung up: nothing more is sent anywhere."""


class ProxyApp:
    """The ASGI app for `/proxy/{name}/...` (provider None), or for one provider's own listener."""

    def __init__(self, credentials: Credentials, check: Check, pool: Pool, stats: ProxyStats,
                 *, provider: str | None = None) -> None:
        self._credentials = credentials
        self._check = check
        self._pool = pool
        self._stats = stats
        self._provider = provider
        self._routes: dict[str, _Route] = {}
        self._prepared: dict[str, _Prepared] = {}
        self._renewals: dict[tuple[str, str], asyncio.Future[Credential]] = {}
        self._watches = _Watches()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets belong to the app around this one
        name, path = self._split(scope)
        if name is None:
            # Checked first like any other: before the checks pass, no path says anything, not even 404.
            denial = self._check(scope, None)
            if denial is not None:
                await _error(send, denial.status, denial.code, denial.message)
            else:
                await _error(send, 404, "not_found", "Proxy paths are /proxy/<provider>/<path>.")
            return
        answer = self._refusal(scope, name)
        if isinstance(answer, tuple):
            await _error(send, *answer, provider=name)
            return
        route = answer
        try:
            assert route.origin is not None
            target = request_target(route.origin, path, scope["query_string"])
        except BadPath as exc:
            await _error(send, 400, "bad_path", f"Refused: {exc}.", provider=name)
            return
        try:
            credential = await self._credential(name)
        except TokenUnavailable as exc:
            await _error(send, 503, "token_unavailable", exc.message, provider=name)
            return
        except UnknownProvider as exc:
            await _error(send, 404, "unknown_provider", exc.message, provider=name)
            return
        if (unsendable := self._prepare(name, credential, route).unsendable) is not None:
            await _error(send, 503, "token_unavailable", unsendable, provider=name)
            return
        await self._forward(scope, receive, send, name, route, target, credential)

    # --- before anything goes upstream ---------------------------------------------------------------------

    def _split(self, scope: Scope) -> tuple[str | None, bytes]:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        if self._provider is not None:
            return self._provider, raw
        name, slash, rest = raw[len(PREFIX):].partition(b"/")
        if not name:
            return None, b""
        return name.decode("latin-1"), slash + rest

    def _refusal(self, scope: Scope, name: str) -> _Route | tuple[int, str, str]:
        """The provider's route, or (status, code, message) saying why the request is refused."""
        denial = self._check(scope, name)
        if denial is not None:
            return denial.status, denial.code, denial.message
        try:
            config = self._credentials.provider_config(name)
        except UnknownProvider as exc:
            return 404, "unknown_provider", exc.message
        route = self._routes.get(name)
        if route is None or route.config is not config:
            route = self._routes[name] = _Route.of(config)
        if route.origin is None:
            return 404, "proxy_off", f"The proxy is off for {name}: set proxy = true in its settings."
        return route

    async def _credential(self, name: str) -> Credential:
        credential = self._credentials.current(name, time.time())
        return credential if credential is not None else await self._credentials.get(name)

    def _prepare(self, name: str, credential: Credential, route: _Route) -> _Prepared:
        prepared = self._prepared.get(name)
        if prepared is None or prepared.credential is not credential or prepared.origin != route.origin:
            assert route.origin is not None
            prepared = self._prepared[name] = _Prepared.of(name, credential, route.origin,
                                                           signed=route.aws is not None)
            if prepared.unsendable is not None:
                log.warning("proxy_unsendable provider=%s reason=%s", name, prepared.unsendable)  # once per credential
        return prepared

    # --- the exchange -------------------------------------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send, name: str, route: _Route,
                       target: bytes, credential: Credential) -> None:
        method: str = scope["method"]
        try:
            body = await _Body.read(scope, receive, route.body_limit)
        except _ClientGone:
            return
        if route.aws is not None and not route.aws.streams and (
                not body.replayable or sum(map(len, body.first)) > route.body_limit):  # refused however it came
            await _error(send, 413, "body_too_large", route.aws.refusal(name, route.body_limit), provider=name)
            return
        client_headers = header_rules.outgoing(scope["headers"], self._prepare(name, credential, route).dropped)
        # Watching for a hang-up costs a task per request; a quick exchange is over before it would matter,
        # so the watch starts only once the request has lasted WATCH_AFTER (a slow upstream, a long stream).
        # A streamed body is read to its end first: the watch and the body must not both call receive().
        watch = _Watch(receive, self._watches) if body.replayable else None
        try:
            answer = await self._exchange(name, route, method, target, client_headers, credential, body)
            if answer.status == 401:
                answer = await self._recover(name, route, method, target, client_headers, credential, body, answer)
            if watch is None:
                watch = _Watch(receive, self._watches)
            await self._relay(answer, send, name)
        except UpstreamFailure as exc:
            self._stats.failed(name)
            log.warning("proxy_upstream_failed provider=%s method=%s path=%s error=%s", name, method,
                        _path_only(target), exc.message)
            await _error(send, 502, "upstream_unreachable", exc.message, provider=name)
        except _ClientGone:
            self._stats.count(name, 499)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watch is None or not watch.hung_up or task is None:
                raise
            task.uncancel()
            self._stats.count(name, 499)  # the client hung up: the upstream request was dropped with it
        finally:
            if watch is not None:
                watch.stop()

    async def _exchange(self, name: str, route: _Route, method: str, target: bytes,
                        client_headers: list[tuple[bytes, bytes]], credential: Credential, body: _Body) -> Answer:
        assert route.origin is not None
        prepared = self._prepare(name, credential, route)
        target = with_query(target, credential.query)
        signature = b"" if route.aws is None else route.aws.head(
            method, route.origin, target, client_headers, credential, b"".join(body.first) if body.replayable else None)
        head = b"".join([method.encode(), b" ", target, b" HTTP/1.1\r\n", prepared.head, signature,
                         *(name_ + b": " + value + b"\r\n" for name_, value in client_headers),
                         body.framing(method), b"\r\n"])
        started = time.perf_counter()
        for attempt in (1, 2):
            conn = await self._pool.connection(route.origin, route.connect_timeout)
            try:
                conn.begin(method, route.read_timeout)
                if body.replayable:
                    await conn.send(head + b"".join(body.first))
                else:
                    await conn.send(head)
                    await body.send(conn)
                answer = await conn.answer(route.read_timeout)
            except UpstreamFailure as exc:
                # A kept-alive connection the upstream closed meanwhile: once more on a new one, as HTTP
                # clients do, for a kept body and an idempotent method only (RFC 9110 section 9.2.2).
                if attempt == 1 and conn.reused and exc.stale and body.replayable and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            self._stats.latency(name, time.perf_counter() - started)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def _recover(self, name: str, route: _Route, method: str, target: bytes,
                       client_headers: list[tuple[bytes, bytes]], credential: Credential, body: _Body,
                       answer: Answer) -> Answer:
        """After a 401: a new token (one refresh for every request that sent this one), then one retry."""
        renewal = self._renewal(name, credential)
        if not body.replayable:
            return answer  # the refresh goes on; the client gets the 401, its body cannot be sent again
        try:
            fresh = await _settled(renewal)
        except BaseException:
            answer.release()  # cancelled (the client hung up): the connection is closed with it
            raise
        if fresh is None or fresh.token == credential.token:
            return answer
        await answer.discard()
        answer.release()
        self._stats.retried(name)
        log.info("proxy_retry provider=%s method=%s path=%s status=401 next=new_token", name, method,
                 _path_only(target))
        return await self._exchange(name, route, method, target, client_headers, fresh, body)

    def _renewal(self, name: str, rejected: Credential) -> asyncio.Future[Credential]:
        """The refresh that replaces `rejected`: shared by every request that sent it, and none at all when
        the manager already holds another token."""
        current = self._credentials.current(name, time.time())
        if current is not None and current.token != rejected.token:
            done: asyncio.Future[Credential] = asyncio.get_running_loop().create_future()
            done.set_result(current)
            return done
        key = (name, rejected.token)
        renewal = self._renewals.get(key)
        if renewal is None:
            renewal = asyncio.ensure_future(self._credentials.refresh(name, rejected=rejected.token))
            self._renewals[key] = renewal
            renewal.add_done_callback(lambda task: self._renewed(key, task))
        return renewal

    def _renewed(self, key: tuple[str, str], task: asyncio.Future[Credential]) -> None:
        self._renewals.pop(key, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            reason = exc.message if isinstance(exc, TokendError) else type(exc).__name__
            log.warning("proxy_refresh_failed provider=%s status=401 error=%s", key[0], reason)

    async def _relay(self, answer: Answer, send: Send, name: str) -> None:
        """The answer back to the client as it arrives; the connection goes back to the pool at the end."""
        try:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": header_rules.incoming(answer.headers)})
            # What came with the head (most API answers whole), or nothing: either way the head goes now.
            await send({"type": "http.response.body", "body": answer.take(), "more_body": not answer.done})
            while not answer.done:
                try:
                    chunk = await answer.chunk()
                except UpstreamFailure as exc:
                    # Too late for a 502: the client must see the answer break off, not a clean end.
                    self._stats.failed(name)
                    log.warning("proxy_answer_broken provider=%s error=%s", name, exc.message)
                    raise _BrokenOff(exc.message) from None
                await send({"type": "http.response.body", "body": chunk, "more_body": not answer.done})
        finally:
            answer.release()
        self._stats.count(name, answer.status)


class _BrokenOff(Exception):
    """The upstream failed mid-answer: raised out of the app, so that the server drops the connection."""


class _Watch:
    """Cancels the request's task when the client hangs up, so that the upstream request is dropped.

    The watching task is started only after WATCH_AFTER (by _Watches): most proxied requests are over long before.
    """

    __slots__ = ("_receive", "_task", "_watcher", "_watches", "hung_up", "since")

    def __init__(self, receive: Receive, watches: _Watches) -> None:
        self.hung_up = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self._watches = watches
        self.since = watches.add(self)

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.hung_up = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        self._watches.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()


class _Watches:
    """Starts the watch of every request that has lasted WATCH_AFTER. One timer for all of them, running only
    while a request is in flight: a timer per request cost more than the rest of the watch."""

    __slots__ = ("_pending", "_timer")

    def __init__(self) -> None:
        self._pending: dict[_Watch, None] = {}  # in the order they began
        self._timer: asyncio.TimerHandle | None = None

    def add(self, watch: _Watch) -> float:
        loop = asyncio.get_running_loop()
        self._pending[watch] = None
        if self._timer is None:
            self._timer = loop.call_later(WATCH_AFTER, self._tick)
        return loop.time()

    def discard(self, watch: _Watch) -> None:
        self._pending.pop(watch, None)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() - WATCH_AFTER
        for watch in list(self._pending):
            if watch.since > due:
                break
            del self._pending[watch]
            watch.start()
        self._timer = loop.call_later(WATCH_AFTER, self._tick) if self._pending else None


async def _settled(renewal: Awaitable[Credential]) -> Credential | None:
    try:
        return await asyncio.shield(renewal)
    except TokendError:
        return None  # logged once by _renewed; the client gets the 401


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _path_only(target: bytes) -> str:
    """The path for a log line: never the query, which may carry a key (Flotiq's ?auth_token=)."""
    return target.partition(b"?")[0].decode("latin-1")


async def _error(send: Send, status: int, code: str, message: str, **extra: Any) -> None:
    body = json.dumps({"error": code, "message": message, **extra}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *_NO_STORE]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="tokend"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
