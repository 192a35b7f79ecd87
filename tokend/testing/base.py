"""What every fake upstream is made of: the Starlette app with its switches (fail, hang, recover), the thread
that serves it (FakeServer), a fake API behind the proxy (FakeAPI), and the small helpers the fakes share.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import json
import socket
import string
import threading
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

ALPHANUMERIC = string.ascii_letters + string.digits
# Status of an answer that nobody reads: the client gave up while a hang() held its request (nginx's 499).
_CLIENT_GONE = 499
# How report_expiry() can get a token's expiry wrong, the ways real APIs do (see FakeUpstream.report_expiry).
ExpiryStyle = Literal["milliseconds", "past", "decades", "missing", "lifetime"]
_DECADES = 30 * 365 * 86400
_KEPT = 10_000  # login attempt times a fake remembers


@dataclass
class Failure:
    status: int
    times: int | None  # None: every request until recover()
    retry_after: float | None
    body: str | None
    content_type: str | None = None


class FakeUpstream:
    """What the three fakes share: outage switches, login counters and the record of issued tokens."""

    protected_path: ClassVar[str] = "/"
    # Whether the login answer carries an expiry that report_expiry() can garble.
    _reports_expiry: ClassVar[bool] = False

    def __init__(self, *, lifetime: float) -> None:
        self.lifetime = lifetime
        self.logins = 0
        self.login_attempts = 0
        # Unix time of each login request, on arrival: the last _KEPT ones, so that a long demo stays small.
        self.login_attempt_times: list[float] = []
        self._lock = threading.Lock()
        self._failure: Failure | None = None
        self._hang = 0.0
        self._expiry_style: ExpiryStyle | None = None
        self._tokens: dict[str, int] = {}  # token -> expiry, Unix seconds
        # Every token issued, expired ones too, for tests that sweep outputs for tokens (bounded for the demo).
        self.issued: collections.deque[str] = collections.deque(maxlen=10_000)
        # The provider's API as the proxy reaches it: checks the credential as this kind wants it sent.
        self.api = FakeAPI(self._api_authorised, self._error)
        self.app = Starlette(
            routes=[*self._routes(), *self.api.routes()], exception_handlers={HTTPException: self._on_http_exception}
        )

    # -- switches, called from the test's thread ---------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int | None = None,
        retry_after: float | None = None,
        body: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next `times` login requests (all when None) with `status` instead of logging in.

        `body` replaces the provider's error envelope with raw text, e.g. a proxy's HTML page served with
        status 200; it is served as application/json when it parses as JSON, else as text/html, unless
        `content_type` says otherwise (a truncated JSON body still labelled application/json).
        """
        if not 200 <= status <= 599:
            raise ValueError(f"status must be between 200 and 599, not {status}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        if content_type is not None and body is None:
            raise ValueError("content_type needs a body")
        with self._lock:
            self._failure = Failure(status, times, retry_after, body, content_type)

    def hang(self, seconds: float) -> None:
        """Hold every login request this long before answering (a slow or stuck upstream).

        A request whose client gives up meanwhile ends there: it issues no token and counts no login.
        """
        with self._lock:
            self._hang = seconds

    def recover(self) -> None:
        """Undo fail() and hang(): the upstream works again."""
        with self._lock:
            self._failure = None
            self._hang = 0.0

    def revoke(self) -> None:
        """Invalidate every token issued so far, before its expiry (a provider revoking sessions early).

        The protected endpoint refuses them from now on; new logins issue tokens that work.
        """
        with self._lock:
            self._tokens.clear()

    def report_expiry(self, style: ExpiryStyle | None) -> None:
        """Report the expiry of the tokens issued from now on wrongly, as real APIs do; None: correctly.

        The token still lives `lifetime` seconds (the fake accepts it that long, a JWT's exp says so); only
        the expiry in the login answer is garbled: "milliseconds" (Unix milliseconds), "past" (an hour
        ago, as a skewed clock says), "decades" (thirty years away), "missing" (no expiry at all) or
        "lifetime" (seconds from now instead of a timestamp). Felloh and FinTech Studios only: the other
        fakes' answers hold no timestamp to garble.
        """
        if not self._reports_expiry:
            raise TypeError(f"{type(self).__name__} has no expiry timestamp to garble")
        with self._lock:
            self._expiry_style = style

    # -- assertions ----------------------------------------------------------------------------------------

    def valid_tokens(self) -> set[str]:
        """The tokens this fake issued that have not expired yet."""
        now = time.time()
        with self._lock:
            return {token for token, expires in self._tokens.items() if now < expires}

    def is_valid(self, token: str) -> bool:
        """Whether this fake issued `token` and it has not expired yet."""
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and time.time() < expires

    # -- for the subclasses ----------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def _api_authorised(self, request: Request) -> bool:
        """Whether an API request carries a valid credential, sent as this provider's docs say."""
        token = bearer_token(request)
        return token is not None and self.is_valid(token)

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        """The provider's own error answer."""
        return JSONResponse({"message": message}, status_code=status, headers=headers)

    def _expiry(self) -> int:
        # Whole seconds, as the providers send it; the fake checks validity against this same integer so
        # that the fake and the daemon agree to the second on when a token dies.
        return int(time.time() + self.lifetime)

    def _reported_expiry(self, expires: int) -> int | None:
        """The expiry the login answer shows for a token that dies at `expires`; None: leave it out."""
        with self._lock:
            style = self._expiry_style
        now = int(time.time())
        match style:
            case "milliseconds":
                return expires * 1000
            case "past":
                return now - 3600
            case "decades":
                return expires + _DECADES
            case "missing":
                return None
            case "lifetime":
                return expires - now
        return expires

    def _issue(self, token: str, expires: int) -> None:
        """Record a new token and count the successful login."""
        now = time.time()
        with self._lock:
            # Dropping the dead ones keeps a long `tokend demo` from growing without bound.
            self._tokens = {t: e for t, e in self._tokens.items() if now < e}
            self._tokens[token] = expires
            self.issued.append(token)
            self.logins += 1

    async def _login_attempt(self, request: Request) -> Response | None:
        """Count a request to the login endpoint, then apply hang() and fail(): see _interfere."""
        with self._lock:
            self.login_attempts += 1
            self.login_attempt_times.append(time.time())
            del self.login_attempt_times[:-_KEPT]
        return await self._interfere(request)

    async def _interfere(self, request: Request) -> Response | None:
        """Apply hang() then fail(): an outage comes before anything the provider itself would check.

        Returns the answer that replaces the real one, or None to carry on.
        """
        # Read the body now: is_disconnected() below consumes a pending body message.
        await request.body()
        with self._lock:
            delay = self._hang
        if delay > 0 and not await _hold(request, delay):
            # The client timed out: it must not count as a login nor receive a token it never saw.
            return Response(status_code=_CLIENT_GONE)
        failure = self._take_failure()
        return None if failure is None else self._failure_response(failure)

    def _take_failure(self) -> Failure | None:
        with self._lock:
            failure = self._failure
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times == 0:
                    self._failure = None
            return failure

    def _failure_response(self, failure: Failure) -> Response:
        headers = {} if failure.retry_after is None else {"Retry-After": _seconds(failure.retry_after)}
        if failure.body is None:
            return self._error(failure.status, status_phrase(failure.status), headers)
        media_type = failure.content_type or ("application/json" if _parses_as_json(failure.body) else "text/html")
        return Response(failure.body, status_code=failure.status, headers=headers, media_type=media_type)

    async def _on_http_exception(self, request: Request, exc: Exception) -> Response:
        # 404 and 405 in the provider's own error shape, as a real API gateway answers them.
        if not isinstance(exc, HTTPException):
            return self._error(500, status_phrase(500))
        return self._error(exc.status_code, status_phrase(exc.status_code), exc.headers)


class FakeServer:
    """Serve an ASGI app with uvicorn in a daemon thread on 127.0.0.1 and a free port."""

    def __init__(self, app: ASGIApp) -> None:
        self.url = ""
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> FakeServer:
        """Start serving; return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("this FakeServer was already started")
        return self._serve(port=0)

    def restart(self) -> FakeServer:
        """Serve again on the same port, stopping first if need be: an upstream that was down comes back.

        While stopped, connections to the port are refused, as they are to a crashed or redeployed service.
        """
        if not self.url:
            raise RuntimeError("this FakeServer was never started")
        self.stop()
        self._thread = None
        return self._serve(port=int(self.url.rsplit(":", 1)[1]))

    def _serve(self, *, port: int) -> FakeServer:
        # Binding the socket ourselves to port 0 gives a free port with no race against other processes.
        # IPPROTO_TCP by name: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
        # it every keep-alive request waits ~40 ms on Nagle's algorithm and delayed ACKs.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        # So that restart() can bind the port again while the closed connections of this run linger in
        # TIME_WAIT: Linux allows it only when both the old socket and the new one asked for it.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"fake {self.url}", daemon=True
        )
        self._thread.start()
        self._wait_started(timeout=10.0)
        return self

    def stop(self) -> None:
        """Stop serving and wait (bounded) for the thread to end. Safe to call twice."""
        if self._server is None or self._thread is None:
            return
        self._request_exit()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            # A request held by hang() keeps a graceful shutdown waiting: stop waiting for it.
            self._server.force_exit = True
            self._thread.join(timeout=5.0)
        if self._socket is not None:
            self._socket.close()
        self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _request_exit(self) -> None:
        # uvicorn notices within its 0.1 s tick; several servers told at once stop in parallel.
        if self._server is not None:
            self._server.should_exit = True

    def _config(self) -> uvicorn.Config:
        # The plain asyncio loop and no websockets: a fake needs no speed, and importing the websockets
        # implementation can emit deprecation warnings, which the test-suite turns into errors.
        return uvicorn.Config(
            self._app, log_level="warning", lifespan="off", loop="asyncio", ws="none", access_log=False
        )

    def _wait_started(self, *, timeout: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake server at {self.url} did not start")
            time.sleep(0.01)


class FakeAPI:
    """A provider's API behind the proxy, with what the proxy tests need, on every fake's server:

    - `ANY /echo/{path}`: answers what arrived (method, path, query, headers, body size and CRC-32), with
      a Set-Cookie and an X-Upstream header, and `?status=N` answers N instead;
    - `GET /bytes/{n}`: n bytes of `pattern()`, streamed (chunked; `?length=1` gives a Content-Length);
    - `POST /upload`: reads the body as it streams in and answers its size and CRC-32;
    - `GET /events`: server-sent events `?n=` of them; each after the first waits for `release()`;
    - `GET /hold`: holds the request until the client hangs up (counted in `cancelled`);
    - `GET /redirect`: a 302 to /echo/moved.

    Each checks the credential first (401 in the provider's error shape, counted in `refused`), so that a
    test sees whether the proxy sent it as the provider wants. `requests` counts requests by path kind.
    """

    def __init__(self, authorised: Any, error: Any) -> None:
        self._authorised = authorised
        self._error = error
        self._lock = threading.Lock()
        self._released = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self.cancelled = 0
        self.holding = 0

    def release(self, events: int = 1) -> None:
        """Let /events send `events` more events."""
        with self._lock:
            self._released += events

    def routes(self) -> list[Route]:
        every = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return [Route("/echo/{rest:path}", self._checked(self._echo), methods=every),
                Route("/bytes/{size:int}", self._checked(self._bytes), methods=["GET"]),
                Route("/upload", self._checked(self._upload), methods=["POST", "PUT"]),
                Route("/events", self._checked(self._events), methods=["GET"]),
                Route("/hold", self._checked(self._hold), methods=["GET"]),
                Route("/redirect", self._checked(self._redirect), methods=["GET"])]

    def _checked(self, endpoint: Any) -> Any:
        async def checked(request: Request) -> Response:
            with self._lock:
                self.requests[request.url.path.split("/")[1]] += 1
            if not self._authorised(request):
                with self._lock:
                    self.refused += 1
                return self._error(401, "Unauthorized")  # type: ignore[no-any-return]
            return await endpoint(request)  # type: ignore[no-any-return]

        return checked

    async def _echo(self, request: Request) -> Response:
        size, crc = 0, 0
        async for chunk in request.stream():
            size, crc = size + len(chunk), zlib.crc32(chunk, crc)
        answer = {"method": request.method, "path": request.scope["raw_path"].decode(),
                  "query": request.scope["query_string"].decode(), "headers": request.headers.items(),
                  "size": size, "crc32": crc}
        status = int(request.query_params.get("status", "200"))
        return JSONResponse(answer, status_code=status,
                            headers={"Set-Cookie": "session=upstream", "X-Upstream": "fake"})

    async def _bytes(self, request: Request) -> Response:
        size = int(request.path_params["size"])
        headers = {"Content-Length": str(size)} if request.query_params.get("length") else None
        return StreamingResponse(pattern(size), headers=headers, media_type="application/octet-stream")

    async def _upload(self, request: Request) -> Response:
        size, crc = 0, 0
        async for chunk in request.stream():
            size, crc = size + len(chunk), zlib.crc32(chunk, crc)
        return JSONResponse({"size": size, "crc32": crc})

    async def _events(self, request: Request) -> Response:
        count = int(request.query_params.get("n", "3"))

        async def events() -> AsyncIterator[bytes]:
            for number in range(count):
                if number:
                    await self._wait_release()
                yield f"id: {number}\ndata: event {number}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _wait_release(self) -> None:
        while True:
            with self._lock:
                if self._released:
                    self._released -= 1
                    return
            await asyncio.sleep(0.01)

    async def _hold(self, request: Request) -> Response:
        with self._lock:
            self.holding += 1
        if not await _hold(request, 60.0):
            with self._lock:
                self.cancelled += 1
            return Response(status_code=_CLIENT_GONE)
        return JSONResponse({"held": True})

    async def _redirect(self, request: Request) -> Response:
        return Response(status_code=302, headers={"Location": "/echo/moved"})


def pattern(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """`size` bytes in pieces of `chunk`, each starting with its number: a reordered or lost piece shows."""
    block = bytes(range(256)) * (chunk // 256)
    number = 0
    while size > 0:
        piece = (number.to_bytes(8, "big") + block[8:])[:size]
        yield piece
        size -= len(piece)
        number += 1


async def _hold(request: Request, seconds: float) -> bool:
    """Sleep up to `seconds`; False as soon as the client hangs up, so no abandoned request lingers."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await request.is_disconnected():
            return False
    return True


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _seconds(value: float) -> str:
    # Retry-After is whole seconds by RFC 9110; a fraction is kept only because tests use sub-second waits.
    return str(int(value)) if value == int(value) else str(value)


def equal(given: str, expected: str) -> bool:
    # Constant time, as a real server compares secrets; bytes because compare_digest refuses non-ASCII str.
    return hmac.compare_digest(given.encode(), expected.encode())


def media_type_of(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def accepts_json(accept: str) -> bool:
    return any(media_type_of(part) == "application/json" for part in accept.split(","))


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def compact_json(value: dict[str, Any]) -> bytes:
    # No spaces, as JWT libraries write it: the header then encodes to the familiar "eyJhbGciOiJIUzI1NiIs...".
    return json.dumps(value, separators=(",", ":")).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error
        return b""


# -- services that take a signed JWT (github_app, google_service_account, private_key_jwt, jwt_bearer) -----------
#
# Each verifies an assertion the way the real service does (the signature with the registered public key, the
# key id or certificate thumbprint, iss, aud, the exp window, iat skew and, where the service keeps them, used
# jti values) and refuses in its own words. `clock_offset` moves a fake's clock: a server whose clock is ahead
# sees our assertion as issued in its past and expired, as a machine whose clock is behind causes. The keys are
# made fresh per fake (cryptography and joserfc are imported only here and in tokend.providers.signing_keys).


class Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


async def login_form(fake: FakeUpstream, request: Request) -> tuple[Response | None, dict[str, str]]:
    """A form-encoded login request counted, with hang() and fail() applied: (the answer replacing the real
    one or None, the form)."""
    interfered = await fake._login_attempt(request)
    form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
    return interfered, form


def oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store"})
