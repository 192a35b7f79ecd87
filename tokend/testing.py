"""Fake upstream providers: real HTTP servers on 127.0.0.1 that answer like the providers' documentation.

They serve the test-suite and `tokend demo`, so that tokend can be run end to end with no account anywhere.

    with serve_fakes() as fakes:
        fakes.felloh.fail(503, times=1, retry_after=2)   # the next login answers 503 with Retry-After
        ...  # point tokend at fakes.felloh_url, fakes.fintech_studios_url and fakes.flotiq_url

Each fake is a Starlette app (`fake.app`); `FakeServer` runs one with uvicorn in a daemon thread. Tests flip
a fake's switches (`fail`, `hang`, `recover`, `revoke`, `report_expiry`, credentials, `lifetime`) from their own
thread while the server answers from its thread, so everything the two share is read or written under a lock.
An upstream that is down altogether is a stopped `FakeServer`; `restart()` brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import html
import json
import math
import secrets
import socket
import string
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = [
    "ExpiryStyle",
    "FakeAPI",
    "FakeAuthorizationServer",
    "FakeEntraID",
    "FakeFelloh",
    "FakeFintechStudios",
    "FakeFlotiq",
    "FakeGitHub",
    "FakeGoogle",
    "FakeOAuth2",
    "FakeProviders",
    "FakeSalesforce",
    "FakeServer",
    "FakeTokenAPI",
    "FakeUpstream",
    "FellohKey",
    "new_private_key",
    "pattern",
    "self_signed_certificate",
    "serve_fakes",
    "write_fake_config",
]

_ALPHANUMERIC = string.ascii_letters + string.digits
# Status of an answer that nobody reads: the client gave up while a hang() held its request (nginx's 499).
_CLIENT_GONE = 499
# How report_expiry() can get a token's expiry wrong, the ways real APIs do (see FakeUpstream.report_expiry).
ExpiryStyle = Literal["milliseconds", "past", "decades", "missing", "lifetime"]
_DECADES = 30 * 365 * 86400
_KEPT = 10_000  # login attempt times a fake remembers


@dataclass
class _Failure:
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
        self._failure: _Failure | None = None
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
            self._failure = _Failure(status, times, retry_after, body, content_type)

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
        token = _bearer_token(request)
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

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            failure = self._failure
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times == 0:
                    self._failure = None
            return failure

    def _failure_response(self, failure: _Failure) -> Response:
        headers = {} if failure.retry_after is None else {"Retry-After": _seconds(failure.retry_after)}
        if failure.body is None:
            return self._error(failure.status, _phrase(failure.status), headers)
        media_type = failure.content_type or ("application/json" if _parses_as_json(failure.body) else "text/html")
        return Response(failure.body, status_code=failure.status, headers=headers, media_type=media_type)

    async def _on_http_exception(self, request: Request, exc: Exception) -> Response:
        # 404 and 405 in the provider's own error shape, as a real API gateway answers them.
        if not isinstance(exc, HTTPException):
            return self._error(500, _phrase(500))
        return self._error(exc.status_code, _phrase(exc.status_code), exc.headers)


@dataclass
class FellohKey:
    """An API key of the fake Felloh organisation (the secret is only ever shown at creation)."""

    id: str
    name: str
    public_key: str
    secret_key: str
    created_at: str
    user_id: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "public_key": self.public_key,
                "secret_key_last_four": self.secret_key[-4:], "created_at": self.created_at,
                "user": {"id": self.user_id}}


class FakeFelloh(FakeUpstream):
    """Felloh: POST /token with {"public_key","private_key"} -> bearer token with absolute expiry."""

    protected_path: ClassVar[str] = "/agent/organisations"
    _reports_expiry: ClassVar[bool] = True

    def __init__(
        self,
        *,
        public_key: str = "demo-felloh-public",
        private_key: str = "demo-felloh-private",
        lifetime: float = 3600.0,
        organisation: str = "X9876",
    ) -> None:
        self.organisation = organisation
        self.user_id = "decc740c-c942-4624-9b5c-b57688a1f356"
        # The organisation's API keys, by id. The first is the pair given here; `public_key` and
        # `private_key` read and write it, so a test can "rotate it elsewhere" by assignment.
        first = self._new_key("dashboard key", public_key, private_key)
        self.keys: dict[str, FellohKey] = {first.id: first}
        self._first_key = first.id
        self._key_failures: dict[str, _Failure] = {}
        super().__init__(lifetime=lifetime)

    @property
    def public_key(self) -> str:
        return self.keys[self._first_key].public_key

    @public_key.setter
    def public_key(self, value: str) -> None:
        self.keys[self._first_key].public_key = value

    @property
    def private_key(self) -> str:
        return self.keys[self._first_key].secret_key

    @private_key.setter
    def private_key(self, value: str) -> None:
        self.keys[self._first_key].secret_key = value

    def fail_keys(self, operation: str, status: int, *, times: int | None = None) -> None:
        """Make the key endpoint `operation` ("list", "create" or "delete") answer `status`."""
        if operation not in ("list", "create", "delete"):
            raise ValueError(f"operation must be list, create or delete, not {operation!r}")
        with self._lock:
            self._key_failures[operation] = _Failure(status, times, None, None)

    def _routes(self) -> list[Route]:
        return [
            Route("/token", self._token, methods=["POST"]),
            Route(self.protected_path, self._organisations, methods=["GET"]),
            Route("/token/keys", self._list_keys, methods=["POST"]),
            Route("/token/key", self._create_key, methods=["PUT"]),
            Route("/token/key/{key_id}", self._delete_key, methods=["DELETE"]),
        ]

    def _new_key(self, name: str, public_key: str, secret_key: str) -> FellohKey:
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return FellohKey(str(uuid.uuid4()), name, public_key, secret_key, created, self.user_id)

    async def _key_request(self, request: Request, operation: str) -> Response | dict[str, Any]:
        """What the three key endpoints share: a valid token, the organisation, and fail_keys()."""
        token = _bearer_token(request)
        if token is None or not self.is_valid(token):
            return self._error(401, "A valid bearer token is required", title="Unauthorised")
        with self._lock:
            failure = self._key_failures.get(operation)
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times == 0:
                    del self._key_failures[operation]
        if failure is not None:
            return self._error(failure.status, _phrase(failure.status))
        body = _json_object(await request.body()) if operation != "delete" else {}
        if body is None:
            return self._error(400, "The request body must be a JSON object")
        if operation != "delete" and body.get("organisation") != self.organisation:
            return self._error(403, "You do not have access to this organisation", title="Forbidden")
        return body

    async def _list_keys(self, request: Request) -> Response:
        body = await self._key_request(request, "list")
        if isinstance(body, Response):
            return body
        with self._lock:
            keys = [key.public() for key in self.keys.values()]
        return _felloh_envelope(200, keys, count=len(keys))

    async def _create_key(self, request: Request) -> Response:
        body = await self._key_request(request, "create")
        if isinstance(body, Response):
            return body
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return self._error(422, "name is required")
        key = self._new_key(name, secrets.token_hex(32), secrets.token_urlsafe(72))
        with self._lock:
            self.keys[key.id] = key
        return _felloh_envelope(200, {"name": key.name, "public_key": key.public_key, "secret_key": key.secret_key})

    async def _delete_key(self, request: Request) -> Response:
        refused = await self._key_request(request, "delete")
        if isinstance(refused, Response):
            return refused
        with self._lock:
            removed = self.keys.pop(request.path_params["key_id"], None)
        if removed is None:
            return self._error(404, "The API key was not found", title="Not Found")
        return _felloh_envelope(200, {})

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        refused = self._check_mime_types(request)
        if refused is not None:
            return refused
        body = _json_object(await request.body())
        if body is None:
            return self._error(400, "The request body must be a JSON object")
        public_key, private_key = body.get("public_key"), body.get("private_key")
        if not isinstance(public_key, str) or not isinstance(private_key, str):
            return self._error(400, "public_key and private_key are required")
        with self._lock:
            pairs = [(key.public_key, key.secret_key) for key in self.keys.values()]
        if not any(_same(public_key, known) and _same(private_key, secret) for known, secret in pairs):
            return self._error(401, "The public or private key is not valid", title="Unauthorised")
        return self._new_token()

    def _check_mime_types(self, request: Request) -> Response | None:
        """Felloh speaks JSON only and says so: both headers are required."""
        if _media_type(request.headers.get("content-type", "")) != "application/json":
            return self._error(415, "The Content-Type header must be application/json")
        if not _accepts_json(request.headers.get("accept", "")):
            return self._error(406, "The Accept header must be application/json")
        return None

    def _new_token(self) -> Response:
        token = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(128))
        expires = self._expiry()
        self._issue(token, expires)
        data: dict[str, Any] = {"token": token, "expiry_time": self._reported_expiry(expires), "type": "BEARER"}
        if data["expiry_time"] is None:
            del data["expiry_time"]
        return _felloh_envelope(200, data)

    async def _organisations(self, request: Request) -> Response:
        token = _bearer_token(request)
        if token is None or not self.is_valid(token):
            return self._error(401, "A valid bearer token is required", title="Unauthorised")
        organisations = [{"id": "f3b2c1d0-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "name": "Demo Travel Ltd"}]
        return _felloh_envelope(200, organisations)

    def _error(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        title: str | None = None,
    ) -> Response:
        errors = [{"title": title or _phrase(status), "message": message}]
        return _felloh_envelope(status, {}, errors=errors, message=message, headers=headers)


class FakeFintechStudios(FakeUpstream):
    """FinTech Studios: x-api-key header + POST /auth/token {"email","password"} -> JWT with expiry.

    The answer is {"token": JWT, "expires": Unix seconds, "userId"}; the JWT is a real HS256 one.
    """

    protected_path: ClassVar[str] = "/v1/news"
    _reports_expiry: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str = "5f0c7e9a-0b1c-4d2e-8f3a-6b7c8d9e0f1a",
        email: str = "demo@example.com",
        password: str = "demo-password",
        lifetime: float = 3600.0,
    ) -> None:
        self.api_key = api_key
        self.email = email
        self.password = password
        # The account's id stays the same when a test rotates the email or the password.
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fintech-studios:{email}"))
        self._secret = secrets.token_bytes(32)
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [
            Route("/auth/token", self._token, methods=["POST"]),
            Route(self.protected_path, self._news, methods=["GET"]),
        ]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        if not self._api_key_ok(request):
            return self._error(403, "Forbidden")
        body = _json_object(await request.body())
        if body is None:
            return self._error(400, "The request body must be a JSON object")
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return self._error(400, "email and password are required")
        if not (_same(email, self.email) and _same(password, self.password)):
            return self._error(401, "Invalid email or password")
        return self._new_token()

    def _new_token(self) -> Response:
        expires = self._expiry()
        claims = {"sub": self.user_id, "iat": int(time.time()), "exp": expires, "jti": secrets.token_hex(16)}
        token = self._sign(claims)
        self._issue(token, expires)
        reported = self._reported_expiry(expires)
        expiry = {} if reported is None else {"expires": reported}
        return JSONResponse({"token": token, **expiry, "userId": self.user_id})

    async def _news(self, request: Request) -> Response:
        # Both are required: the static key names the organisation, the JWT the user.
        if not self._api_key_ok(request):
            return self._error(403, "Forbidden")
        token = _bearer_token(request)
        # is_valid() too: a revoked token still carries a good signature and exp.
        if token is None or not self._jwt_valid(token) or not self.is_valid(token):
            return self._error(401, "Unauthorized")
        return JSONResponse({"data": [{"id": "n-1", "title": "Markets open higher"}], "total": 1})

    def _api_key_ok(self, request: Request) -> bool:
        return _same(request.headers.get("x-api-key", ""), self.api_key)

    def _api_authorised(self, request: Request) -> bool:
        token = _bearer_token(request)
        return self._api_key_ok(request) and token is not None and self._jwt_valid(token) and self.is_valid(token)

    def _sign(self, claims: dict[str, Any]) -> str:
        """An HS256 JWT, made by hand so that the fake needs no JWT library."""
        header = _b64url(_compact_json({"alg": "HS256", "typ": "JWT"}))
        payload = _b64url(_compact_json(claims))
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def _jwt_valid(self, token: str) -> bool:
        """Checked as the real API would: our signature, and `exp` not reached."""
        header, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        expected = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64url(expected).encode(), signature.encode()):
            return False
        claims = _json_object(_b64url_decode(payload))
        expires = None if claims is None else claims.get("exp")
        return isinstance(expires, int) and time.time() < expires


class FakeFlotiq(FakeUpstream):
    """Flotiq: static keys only, no login endpoint.

    The protected GET /api/v1/content/{type} takes a key as the X-AUTH-TOKEN header or ?auth_token=.
    With no login endpoint, `logins` and `login_attempts` stay 0, and fail() and hang() act on the
    protected endpoint instead. Keys never expire: valid_tokens() is the set of keys.
    """

    protected_path: ClassVar[str] = "/api/v1/content/blogposts"

    def __init__(self, *, api_keys: Iterable[str] = ("demo-flotiq-read-only-key",)) -> None:
        self.api_keys = set(api_keys)
        super().__init__(lifetime=math.inf)

    def valid_tokens(self) -> set[str]:
        return set(self.api_keys)

    def is_valid(self, token: str) -> bool:
        return token in self.api_keys

    def _routes(self) -> list[Route]:
        return [Route("/api/v1/content/{content_type}", self._content, methods=["GET"])]

    def _api_authorised(self, request: Request) -> bool:
        key = request.headers.get("x-auth-token") or request.query_params.get("auth_token")
        return key is not None and self.is_valid(key)

    async def _content(self, request: Request) -> Response:
        interfered = await self._interfere(request)
        if interfered is not None:
            return interfered
        key = request.headers.get("x-auth-token") or request.query_params.get("auth_token")
        if key is None or not self.is_valid(key):
            return self._error(401, "Unauthorized")
        return JSONResponse({"total_count": 0, "total_pages": 0, "current_page": 1, "count": 0, "data": []})


class FakeOAuth2(FakeUpstream):
    """An OAuth 2.0 authorization server: the client credentials grant of RFC 6749 section 4.4.

    POST /oauth/token, form-encoded, the client authenticated by HTTP Basic or by form fields; answers
    {"access_token", "token_type": "bearer", "expires_in", "scope"} or a section 5.2 error. The last
    request's form and auth method are kept (`last_form`, `last_auth_method`) for assertions.
    """

    protected_path: ClassVar[str] = "/api/resource"

    def __init__(
        self, *, client_id: str = "demo-client", client_secret: str = "demo-client-secret", lifetime: float = 3600.0
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.last_form: dict[str, str] = {}
        self.last_auth_method = ""
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [
            Route("/oauth/token", self._token, methods=["POST"]),
            Route(self.protected_path, self._resource, methods=["GET"]),
        ]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        # Parsed by hand: Starlette's form parser needs python-multipart, which tokend does not depend on.
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        client = self._client(request, form)
        with self._lock:
            self.last_form = form
        if client is None or not (_same(client[0], self.client_id) and _same(client[1], self.client_secret)):
            return self._oauth_error(401, "invalid_client", "Client authentication failed")
        if form.get("grant_type") != "client_credentials":
            return self._oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        token = secrets.token_urlsafe(32)
        expires = self._expiry()
        self._issue(token, expires)
        answer = {"access_token": token, "token_type": "bearer", "expires_in": expires - int(time.time())}
        return JSONResponse({**answer, **({"scope": form["scope"]} if "scope" in form else {})},
                            headers={"Cache-Control": "no-store"})

    def _client(self, request: Request, form: dict[str, str]) -> tuple[str, str] | None:
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            self.last_auth_method = "client_secret_basic"
            try:
                pair = base64.b64decode(authorization[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            client_id, _, client_secret = pair.partition(":")
            return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(client_secret)
        self.last_auth_method = "client_secret_post"
        if "client_id" in form and "client_secret" in form:
            return form["client_id"], form["client_secret"]
        return None

    def _oauth_error(self, status: int, error: str, description: str) -> Response:
        headers = {"WWW-Authenticate": 'Basic realm="fake"'} if status == 401 else None
        return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)

    async def _resource(self, request: Request) -> Response:
        token = _bearer_token(request)
        if token is None or not self.is_valid(token):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"ok": True})


class FakeTokenAPI(FakeUpstream):
    """A made-up token API whose expiry format is a switch, for the declarative `http` provider.

    POST /session with JSON {"user", "password"} and the header X-Client: demo answers
    {"result": {"session": {"key": TOKEN, "expiry": EXPIRY}}, "trace": ID}, with EXPIRY written as
    `expiry_format` says: "unix", "unix_ms", "iso8601", "seconds" (from now) or "jwt" (none given; the
    token is a JWT whose exp claim holds it). The protected GET /data wants `Authorization: Session TOKEN`.
    """

    protected_path: ClassVar[str] = "/data"

    def __init__(
        self, *, user: str = "demo", password: str = "demo-api-password", expiry_format: str = "unix",
        lifetime: float = 3600.0,
    ) -> None:
        self.user = user
        self.password = password
        self.expiry_format = expiry_format
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [
            Route("/session", self._token, methods=["POST"]),
            Route(self.protected_path, self._data, methods=["GET"]),
        ]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        body = _json_object(await request.body())
        if request.headers.get("x-client") != "demo" or body is None:
            return self._error(400, "X-Client header and a JSON body are required")
        if not (_same(str(body.get("user")), self.user) and _same(str(body.get("password")), self.password)):
            return self._error(401, "bad user or password")
        expires = self._expiry()
        if self.expiry_format == "jwt":
            claims = {"exp": expires, "jti": secrets.token_hex(8)}
            token = f"{_b64url(_compact_json({'alg': 'none'}))}.{_b64url(_compact_json(claims))}.x"
        else:
            token = secrets.token_hex(24)
        self._issue(token, expires)
        session: dict[str, Any] = {"key": token}
        if self.expiry_format != "jwt":
            session["expiry"] = self._formatted(expires)
        return JSONResponse({"result": {"session": session}, "trace": str(uuid.uuid4())})

    def _formatted(self, expires: int) -> Any:
        match self.expiry_format:
            case "unix_ms":
                return expires * 1000
            case "iso8601":
                return datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
            case "seconds":
                return expires - int(time.time())
        return expires

    def _api_authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Session" and self.is_valid(token)

    async def _data(self, request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Session" or not self.is_valid(token):
            return self._error(401, "a valid session is required")
        return JSONResponse({"data": [1, 2, 3]})


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


@dataclass
class FakeProviders:
    """The three fakes started by serve_fakes(), with the base URL each one answers on."""

    felloh: FakeFelloh
    fintech_studios: FakeFintechStudios
    flotiq: FakeFlotiq
    felloh_url: str
    fintech_studios_url: str
    flotiq_url: str


@contextlib.contextmanager
def serve_fakes(*, lifetime: float = 3600.0) -> Iterator[FakeProviders]:
    """Start all three fakes, each on its own FakeServer, and stop them on exit."""
    felloh, fintech_studios, flotiq = (
        FakeFelloh(lifetime=lifetime),
        FakeFintechStudios(lifetime=lifetime),
        FakeFlotiq(),
    )
    servers = [FakeServer(fake.app) for fake in (felloh, fintech_studios, flotiq)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        # Registered last, so it runs first: all three wind down together before each stop() waits.
        for server in servers:
            stack.callback(server._request_exit)
        yield FakeProviders(felloh, fintech_studios, flotiq, *(server.url for server in servers))


def write_fake_config(directory: Path, fakes: FakeProviders, port: int, *, extra: str = "", **options: object) -> Path:
    """A tokend config for the three fakes, its secrets in 0600 files as they would be in production.

    `options` are added to every provider table (`min_refresh_interval=0.5`); `extra` is appended as is.
    """
    secrets = {
        "felloh_public_key": fakes.felloh.public_key,
        "felloh_private_key": fakes.felloh.private_key,
        "fts_api_key": fakes.fintech_studios.api_key,
        "fts_password": fakes.fintech_studios.password,
        "flotiq_api_key": sorted(fakes.flotiq.api_keys)[0],
    }
    for name, value in secrets.items():
        path = directory / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
    common = "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())
    config = directory / "tokend.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {port}

[providers.felloh]
kind = "felloh"
base_url = "{fakes.felloh_url}"
public_key = {{ file = "{directory / 'felloh_public_key'}" }}
private_key = {{ file = "{directory / 'felloh_private_key'}" }}
{common}
[providers.fts]
kind = "fintech_studios"
base_url = "{fakes.fintech_studios_url}"
api_key = {{ file = "{directory / 'fts_api_key'}" }}
email = "{fakes.fintech_studios.email}"
password = {{ file = "{directory / 'fts_password'}" }}
{common}
[providers.flotiq]
kind = "flotiq"
base_url = "{fakes.flotiq_url}"
api_key = {{ file = "{directory / 'flotiq_api_key'}" }}
{common}
{extra}""")
    return config


# -- user tokens: an authorization server with rotation, reuse detection, the device flow and revocation ---------


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    expires_at: float
    interval: float
    scope: str | None
    state: Literal["pending", "approved", "denied", "done"] = "pending"
    last_poll: float = 0.0


class FakeAuthorizationServer(FakeUpstream):
    """An OAuth 2.0 authorization server for user tokens, as Auth0 and Okta run theirs:

    - `POST /oauth/token`, `grant_type=refresh_token` (RFC 6749 section 6): a new access token and, with
      `rotate` (the default), a new refresh token; the spent one dies. Presenting a spent one again is theft
      by the server's rules: the whole family (every refresh token descended from one sign-in) is revoked,
      and `reuse_detected` counts it. A revoked or unknown one answers `invalid_grant`.
    - `POST /oauth/device` (RFC 8628 section 3.1) and `grant_type=urn:ietf:params:oauth:grant-type:device_code`
      on the token endpoint: `authorization_pending` until a test calls `approve()` (or `deny()`), `slow_down`
      (and five seconds more on the interval) when polled faster than the interval or after `slow_down()`,
      `expired_token` once the code has expired (or after `expire()`), `access_denied` after `deny()`.
    - `POST /oauth/revoke` (RFC 7009): revokes the token's family; always 200.
    - `GET /api/me`: the protected resource, wanting `Authorization: Bearer <access token>`.

    The client is public (`client_id` in the form) unless `client_secret` is given, then HTTP Basic or the
    form fields. `fail()`/`hang()` apply to the refresh grant; `logins` counts access tokens issued.
    """

    protected_path: ClassVar[str] = "/api/me"

    def __init__(
        self, *, client_id: str = "demo-user-app", client_secret: str | None = None, lifetime: float = 3600.0,
        rotate: bool = True, device_lifetime: float = 600.0, interval: float = 1.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.rotate = rotate
        self.device_lifetime = device_lifetime
        self.interval = interval
        self.reuse_detected = 0  # spent refresh tokens presented again
        self.refreshes = 0  # successful refresh grants
        self.revocations = 0
        self.revoked: list[str] = []  # the tokens revocation was asked for, in order
        self.device_polls = 0
        self.last_form: dict[str, str] = {}
        # Seconds between spending a refresh token and answering: a slow way back, during which the spent one
        # is gone and the new one not yet delivered (what a stop or a reload must not lose).
        self.answer_delay = 0.0
        # Fields the next device authorization answers carry instead of (or besides) the fake's own.
        self.device_answer: dict[str, Any] = {}
        self._refresh_tokens: dict[str, tuple[str, bool]] = {}  # refresh token -> (family, spent)
        self._revoked_families: set[str] = set()
        self._access_families: dict[str, str] = {}  # access token -> family
        self._devices: dict[str, _DeviceGrant] = {}  # device code -> grant
        self._slow_downs = 0
        super().__init__(lifetime=lifetime)

    # -- switches and assertions ------------------------------------------------------------------------

    def sign_in(self) -> str:
        """A refresh token of a new family, as a user's sign-in elsewhere would leave (for a config)."""
        with self._lock:
            return self._new_refresh_token(secrets.token_hex(8))

    def approve(self, user_code: str | None = None) -> None:
        """The user approves the (latest, or the named) device sign-in."""
        self._set_device(user_code, "approved")

    def deny(self, user_code: str | None = None) -> None:
        self._set_device(user_code, "denied")

    def expire(self, user_code: str | None = None) -> None:
        with self._lock:
            self._device(user_code).expires_at = 0.0

    def slow_down(self, times: int = 1) -> None:
        """Answer the next `times` device polls with slow_down."""
        with self._lock:
            self._slow_downs += times

    def pending_user_codes(self) -> list[str]:
        with self._lock:
            return [grant.user_code for grant in self._devices.values() if grant.state == "pending"]

    def live_refresh_tokens(self) -> set[str]:
        """Refresh tokens that would be honoured now: unspent, and of a family not revoked."""
        with self._lock:
            return {token for token, (family, spent) in self._refresh_tokens.items()
                    if not spent and family not in self._revoked_families}

    def refresh_tokens_issued(self) -> set[str]:
        with self._lock:
            return set(self._refresh_tokens)

    def newest_refresh_token(self) -> str:
        with self._lock:
            return list(self._refresh_tokens)[-1]

    def is_valid(self, token: str) -> bool:
        with self._lock:
            family = self._access_families.get(token)
            if family is not None and family in self._revoked_families:
                return False
        return super().is_valid(token)

    # -- the endpoints ------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/oauth/token", self._token, methods=["POST"]),
            Route("/oauth/device", self._device_authorization, methods=["POST"]),
            Route("/oauth/revoke", self._revoke, methods=["POST"]),
            Route("/activate", self._activate, methods=["GET", "POST"]),
            Route(self.protected_path, self._me, methods=["GET"]),
        ]

    async def _activate(self, request: Request) -> Response:
        """The verification page a person opens (`tokend demo`): GET shows the code's form, POST approves
        (or, with `deny=1`, refuses) `user_code`."""
        if request.method == "GET":
            code = html.escape(request.query_params.get("user_code", ""))
            return Response(f"<!doctype html><title>Fake sign-in</title><form method=post>"
                            f"<p>Code: <input name=user_code value='{code}'></p><button>Approve</button> "
                            f"<button name=deny value=1>Deny</button></form>", media_type="text/html")
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        try:
            self._set_device(form.get("user_code", "").strip().upper(), "denied" if form.get("deny") else "approved")
        except LookupError:
            return Response("No sign-in is waiting for that code.\n", status_code=404, media_type="text/plain")
        return Response("Done: go back to your terminal.\n", media_type="text/plain")

    async def _token(self, request: Request) -> Response:
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        with self._lock:
            self.last_form = form
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Client authentication failed")
        if form.get("grant_type") == DEVICE_GRANT_TYPE:
            return self._poll(form)
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        if form.get("grant_type") != "refresh_token":
            return self._oauth_error(400, "unsupported_grant_type", "refresh_token or device_code only")
        with self._lock:
            presented = form.get("refresh_token", "")
            known = self._refresh_tokens.get(presented)
            if known is None:
                return self._oauth_error(400, "invalid_grant", "Unknown refresh token")
            family, spent = known
            if family in self._revoked_families:
                return self._oauth_error(400, "invalid_grant", "The refresh token was revoked")
            if spent:
                self.reuse_detected += 1
                self._revoked_families.add(family)
                return self._oauth_error(400, "invalid_grant", "Refresh token reuse detected; the family is revoked")
            if self.rotate:
                self._refresh_tokens[presented] = (family, True)
                refresh = self._new_refresh_token(family)
            else:
                refresh = presented
            self.refreshes += 1
            delay = self.answer_delay
        if delay:
            await asyncio.sleep(delay)
        return self._tokens_answer(family, refresh if self.rotate else None, form.get("scope"))

    def _poll(self, form: dict[str, str]) -> Response:
        now = time.time()
        with self._lock:
            self.device_polls += 1
            grant = self._devices.get(form.get("device_code", ""))
            if grant is None or grant.state == "done":
                return self._oauth_error(400, "invalid_grant", "Unknown device code")
            early = now - grant.last_poll < grant.interval - 0.5
            grant.last_poll = now
            if now >= grant.expires_at:
                return self._oauth_error(400, "expired_token", "The device code expired")
            if grant.state == "denied":
                return self._oauth_error(400, "access_denied", "The user denied the request")
            if early or self._slow_downs:
                self._slow_downs = max(0, self._slow_downs - 1)
                grant.interval += 5
                return self._oauth_error(400, "slow_down", "Polling too fast")
            if grant.state == "pending":
                return self._oauth_error(400, "authorization_pending", "The user has not approved yet")
            grant.state = "done"
            family = secrets.token_hex(8)
            refresh = self._new_refresh_token(family)
        return self._tokens_answer(family, refresh, grant.scope)

    async def _device_authorization(self, request: Request) -> Response:
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Client authentication failed")
        code = secrets.token_urlsafe(24)
        user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        with self._lock:
            self._devices[code] = _DeviceGrant(code, user_code, time.time() + self.device_lifetime, self.interval,
                                               form.get("scope"), last_poll=time.time())
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "device_code": code, "user_code": user_code, "verification_uri": f"{base}/activate",
            "verification_uri_complete": f"{base}/activate?user_code={user_code}",
            "expires_in": int(self.device_lifetime), "interval": _interval(self.interval), **self.device_answer,
        }, headers={"Cache-Control": "no-store"})

    async def _revoke(self, request: Request) -> Response:
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Client authentication failed")
        with self._lock:
            self.revocations += 1
            token = form.get("token", "")
            self.revoked.append(token)
            family = self._refresh_tokens.get(token, (None, False))[0] or self._access_families.get(token)
            if family is not None:
                self._revoked_families.add(family)
        return Response(status_code=200)

    async def _me(self, request: Request) -> Response:
        token = _bearer_token(request)
        if token is None or not self.is_valid(token):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"sub": "demo-user"})

    # -- internals ----------------------------------------------------------------------------------------

    def _tokens_answer(self, family: str, refresh: str | None, scope: str | None) -> Response:
        token = secrets.token_urlsafe(32)
        expires = self._expiry()
        self._issue(token, expires)
        with self._lock:
            self._access_families[token] = family
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": expires - int(time.time())}
        if refresh is not None:
            answer["refresh_token"] = refresh
        if scope:
            answer["scope"] = scope
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    def _new_refresh_token(self, family: str) -> str:
        token = secrets.token_urlsafe(32)
        self._refresh_tokens[token] = (family, False)
        return token

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        authorization = request.headers.get("authorization", "")
        if self.client_secret is None:
            return _same(form.get("client_id", ""), self.client_id) and "client_secret" not in form
        if authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            client_id, _, client_secret = pair.partition(":")
            given = urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(client_secret)
        else:
            given = form.get("client_id", ""), form.get("client_secret", "")
        return _same(given[0], self.client_id) and _same(given[1], self.client_secret)

    def _device(self, user_code: str | None) -> _DeviceGrant:
        grants = [grant for grant in self._devices.values() if user_code in (None, grant.user_code)]
        if not grants:
            raise LookupError(f"no device sign-in {user_code or ''} was started")
        return grants[-1]

    def _set_device(self, user_code: str | None, state: Literal["approved", "denied"]) -> None:
        with self._lock:
            self._device(user_code).state = state

    def _oauth_error(self, status: int, error: str, description: str) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status_code=status,
                            headers={"Cache-Control": "no-store"})


DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


def _interval(value: float) -> float | int:
    return int(value) if value == int(value) else value


# -- helpers -------------------------------------------------------------------------------------------------


def _felloh_envelope(
    status: int,
    data: Any,
    *,
    errors: list[dict[str, str]] | None = None,
    message: str = "The request was successful",
    headers: Mapping[str, str] | None = None,
    count: int | None = None,
) -> JSONResponse:
    """Felloh wraps every answer alike, and every one carries a fresh meta.request_id."""
    meta: dict[str, Any] = {"code": status, "reason": _phrase(status), "message": message,
                            "request_id": str(uuid.uuid4())}
    if count is not None:
        meta["count"] = count
    body = {"data": data, "errors": errors or [], "meta": meta}
    return JSONResponse(body, status_code=status, headers=headers)


async def _hold(request: Request, seconds: float) -> bool:
    """Sleep up to `seconds`; False as soon as the client hangs up, so no abandoned request lingers."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await request.is_disconnected():
            return False
    return True


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _seconds(value: float) -> str:
    # Retry-After is whole seconds by RFC 9110; a fraction is kept only because tests use sub-second waits.
    return str(int(value)) if value == int(value) else str(value)


def _same(given: str, expected: str) -> bool:
    # Constant time, as a real server compares secrets; bytes because compare_digest refuses non-ASCII str.
    return hmac.compare_digest(given.encode(), expected.encode())


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _accepts_json(accept: str) -> bool:
    return any(_media_type(part) == "application/json" for part in accept.split(","))


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _json_object(raw: bytes) -> dict[str, Any] | None:
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


def _compact_json(value: dict[str, Any]) -> bytes:
    # No spaces, as JWT libraries write it: the header then encodes to the familiar "eyJhbGciOiJIUzI1NiIs...".
    return json.dumps(value, separators=(",", ":")).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
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
# made fresh per fake (cryptography and joserfc are imported only here and in tokend.signing).


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def new_private_key(kind: Literal["RSA", "EC"] = "RSA", *, bits: int = 2048, passphrase: str | None = None) -> str:
    """A fresh private key as PKCS#8 PEM (encrypted when `passphrase` is given), for a fake and its config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=bits) if kind == "RSA"
                else ec.generate_private_key(ec.SECP256R1()))
    encryption: Any = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                       else serialization.NoEncryption())
    text: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return text.decode()


def self_signed_certificate(private_key_pem: str, common_name: str = "tokend test") -> str:
    """A PEM certificate for `private_key_pem`, as `openssl req -x509` makes for an Entra ID app."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key: Any = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(datetime.fromtimestamp(now.timestamp() + 86400 * 365, UTC))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _public_jwk(private_key_pem: str) -> Any:
    from joserfc.jwk import ECKey, RSAKey

    from tokend.signing import load_key

    key = load_key(private_key_pem)
    public: Any = key.key.public_key()
    return RSAKey.import_key(public) if key.type == "RSA" else ECKey.import_key(public)


def _verified(assertion: str, keys: Mapping[str, Any], algorithms: list[str], key_id: Any) -> tuple[dict[str, Any],
                                                                                                     dict[str, Any]]:
    """(header, claims) of a JWS whose signature one of `keys` verifies; `key_id(header)` picks which (a kid,
    an x5t#S256), None when the header names none. _Refused with `invalid signature` otherwise."""
    from joserfc import jws
    from joserfc.errors import JoseError

    try:
        header = json.loads(_b64url_decode(assertion.split(".")[0]))
    except (ValueError, IndexError):
        raise _Refused(400, "invalid_grant", "malformed JWT") from None
    if not isinstance(header, dict) or header.get("alg") not in algorithms:
        raise _Refused(400, "invalid_grant", f"unsupported alg {header.get('alg') if isinstance(header, dict) else ''}")
    chosen = key_id(header)
    candidates = [keys[chosen]] if chosen in keys else [] if chosen is not None else list(keys.values())
    for key in candidates:
        try:
            payload = jws.deserialize_compact(assertion, key, algorithms=algorithms).payload
        except JoseError:
            continue
        claims = json.loads(payload)
        if isinstance(claims, dict):
            return header, claims
    raise _Refused(400, "invalid_grant", "invalid signature" if candidates else "unknown key id")


def _check_times(claims: Mapping[str, Any], now: float, *, max_lifetime: float, leeway: float = 60.0) -> str | None:
    """What is wrong with an assertion's iat and exp seen from a clock reading `now`, or None."""
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        return "iat and exp are required"
    if iat > now + leeway:
        return "iat is in the future"
    if exp <= now - leeway:
        return "exp is in the past"
    if exp - iat > max_lifetime:
        return f"exp is more than {max_lifetime:g} seconds after iat"
    return None


class FakeGoogle(FakeUpstream):
    """Google's OAuth 2.0 token endpoint for service accounts (the JWT bearer grant of RFC 7523).

    POST /token, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`. The JWT must be
    RS256, signed by the key its header's `kid` names (one of the account's keys; `rotate_key()` makes a new one
    and deletes the old, as the console does), `iss` = the account's email, `aud` = the token URI, `exp` at most
    an hour after `iat`. Answers `{"access_token": "ya29...", "expires_in", "token_type": "Bearer"}`, or for a
    `target_audience` claim `{"id_token": JWT}` signed by Google's own key (`aud` = the audience). Refusals are
    400 `invalid_grant` in Google's words. `key_file(token_uri)` is the account's JSON key file.
    """

    protected_path: ClassVar[str] = "/storage/v1/b"
    _GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

    def __init__(self, *, client_email: str = "tokend-demo@demo-project.iam.gserviceaccount.com",
                 lifetime: float = 3600.0) -> None:
        self.client_email = client_email
        self.clock_offset = 0.0
        self.token_uri = ""  # set by whoever serves it: the `aud` this fake wants
        self.private_key = new_private_key()
        self.private_key_id = secrets.token_hex(20)
        self._keys = {self.private_key_id: _public_jwk(self.private_key)}
        self._google_key = new_private_key()  # signs the ID tokens
        self.last_claims: dict[str, Any] = {}
        self.last_header: dict[str, Any] = {}
        super().__init__(lifetime=lifetime)

    def key_file(self, token_uri: str | None = None) -> str:
        """The service account's JSON key file, as the console's "Add key" downloads it."""
        return json.dumps({
            "type": "service_account", "project_id": "demo-project", "private_key_id": self.private_key_id,
            "private_key": self.private_key, "client_email": self.client_email, "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri or self.token_uri,
        }, indent=2)

    def rotate_key(self) -> None:
        """A new key for the account; the old one is deleted (assertions it signs are refused from now on)."""
        private_key, key_id = new_private_key(), secrets.token_hex(20)
        with self._lock:
            self.private_key, self.private_key_id = private_key, key_id
            self._keys = {key_id: _public_jwk(private_key)}

    def _routes(self) -> list[Route]:
        return [Route("/token", self._token, methods=["POST"]),
                Route(self.protected_path, self._buckets, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered, form = await _login_form(self, request)
        if interfered is not None:
            return interfered
        if form.get("grant_type") != self._GRANT:
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
        try:
            claims = self._checked(form.get("assertion", ""))
        except _Refused as refused:
            return _oauth_error(refused.status, refused.error, refused.description)
        now = int(time.time())
        if "target_audience" in claims:
            token = self._id_token(str(claims["target_audience"]), now)
            self._issue(token, self._expiry())
            return JSONResponse({"id_token": token})
        if not claims.get("scope"):
            return _oauth_error(400, "invalid_scope", "Empty or missing scope not allowed.")
        token = "ya29." + secrets.token_urlsafe(48)
        expires = self._expiry()
        self._issue(token, expires)
        return JSONResponse({"access_token": token, "expires_in": expires - now, "token_type": "Bearer"})

    def _checked(self, assertion: str) -> dict[str, Any]:
        with self._lock:
            keys = dict(self._keys)
        try:
            header, claims = _verified(assertion, keys, ["RS256"], lambda header: header.get("kid", ""))
        except _Refused:
            raise _Refused(400, "invalid_grant", "Invalid JWT Signature.") from None
        with self._lock:
            self.last_header, self.last_claims = header, claims
        if claims.get("iss") != self.client_email:
            raise _Refused(400, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self.token_uri:
            raise _Refused(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        if _check_times(claims, time.time() + self.clock_offset, max_lifetime=3600) is not None:
            raise _Refused(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                           "in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        return claims

    def _id_token(self, audience: str, now: int) -> str:
        from tokend.signing import load_key

        claims = {"iss": "https://accounts.google.com", "aud": audience, "azp": self.client_email,
                  "email": self.client_email, "email_verified": True, "sub": "1234567890", "iat": now,
                  "exp": self._expiry()}
        return load_key(self._google_key).sign(claims, alg="RS256", header={"kid": "google-1"})

    async def _buckets(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return _google_error(401, "Invalid Credentials")
        return JSONResponse({"kind": "storage#buckets", "items": [{"name": "demo-bucket"}]})

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return _google_error(status, message, headers)


async def _login_form(fake: FakeUpstream, request: Request) -> tuple[Response | None, dict[str, str]]:
    """A form-encoded login request counted, with hang() and fail() applied: (the answer replacing the real
    one or None, the form)."""
    interfered = await fake._login_attempt(request)
    form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
    return interfered, form


def _google_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": status, "message": message, "errors": [{"message": message}]}},
                        status_code=status, headers=headers)


def _oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store"})


class FakeGitHub(FakeUpstream):
    """GitHub's REST API for a GitHub App: installation access tokens.

    `POST /app/installations/{id}/access_tokens` wants `Authorization: Bearer <app JWT>` (RS256, signed by the
    app's key, `iss` its client ID or app ID, `iat` not in the future, `exp` at most ten minutes after `iat` and
    still ahead), a `User-Agent` (403 without, as GitHub's front end answers) and an `X-GitHub-Api-Version` it
    knows; a JSON body may narrow the token (`repositories`, `repository_ids`, `permissions`). Answers `201`
    `{"token": "ghs_...", "expires_at": ISO 8601, "permissions", "repository_selection"[, "repositories"]}`,
    `404 Not Found` for an installation the app does not have, and `401` in GitHub's words for a bad JWT.
    `GET /installation/repositories` wants the installation token. The last request is kept (`last_headers`,
    `last_body`, `last_claims`) for assertions.
    """

    protected_path: ClassVar[str] = "/installation/repositories"

    def __init__(self, *, app_id: int = 123456, client_id: str = "Iv23liDemoClientId",
                 installations: Iterable[int] = (987654,), repositories: Iterable[str] = ("demo", "docs"),
                 lifetime: float = 3600.0) -> None:
        self.app_id, self.client_id = app_id, client_id
        self.installations = set(installations)
        self.repositories = list(repositories)
        self.clock_offset = 0.0
        self.private_key = new_private_key()
        self._key = _public_jwk(self.private_key)
        self.last_headers: dict[str, str] = {}
        self.last_body: Any = None
        self.last_claims: dict[str, Any] = {}
        super().__init__(lifetime=lifetime)

    def rotate_key(self) -> None:
        """A new private key for the app; the old one is deleted on the app's page (its JWTs refused)."""
        private_key = new_private_key()
        with self._lock:
            self.private_key, self._key = private_key, _public_jwk(private_key)

    def _routes(self) -> list[Route]:
        return [Route("/app/installations/{installation:int}/access_tokens", self._token, methods=["POST"]),
                Route(self.protected_path, self._repositories, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        with self._lock:
            self.last_headers = dict(request.headers)
        if not request.headers.get("user-agent"):
            return self._error(403, "Request forbidden by administrative rules. Please make sure your request has "
                               "a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required).")
        if request.headers.get("x-github-api-version", "2022-11-28") not in ("2022-11-28", "2026-03-10"):
            return self._error(400, "Unsupported 'X-GitHub-Api-Version' header")
        refused = self._refused_jwt(_bearer_token(request) or "")
        if refused is not None:
            return self._error(401, refused)
        if request.path_params["installation"] not in self.installations:
            return self._error(404, "Not Found")
        raw = await request.body()
        body = _json_object(raw) if raw else {}
        if body is None:
            return self._error(400, "Problems parsing JSON")
        with self._lock:
            self.last_body = body if raw else None
        unknown = [name for name in body.get("repositories", []) if name not in self.repositories]
        if unknown:
            return self._error(422, "There is at least one repository that does not exist or is not accessible to "
                               "the parent installation.")
        token = "ghs_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(36))
        expires = self._expiry()
        self._issue(token, expires)
        answer: dict[str, Any] = {
            "token": token, "expires_at": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": body.get("permissions") or {"contents": "read", "metadata": "read"},
            "repository_selection": "selected" if body.get("repositories") or body.get("repository_ids") else "all",
        }
        if body.get("repositories"):
            answer["repositories"] = [{"name": name, "full_name": f"demo-org/{name}"} for name in body["repositories"]]
        return JSONResponse(answer, status_code=201)

    def _refused_jwt(self, assertion: str) -> str | None:
        """GitHub's message for an app JWT it refuses, or None."""
        with self._lock:
            key = self._key
        try:
            _, claims = _verified(assertion, {"app": key}, ["RS256"], lambda header: None)
        except _Refused:
            return "A JSON web token could not be decoded"
        with self._lock:
            self.last_claims = claims
        if claims.get("iss") not in (self.client_id, str(self.app_id), self.app_id):
            return "Integration not found"
        now = time.time() + self.clock_offset
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or iat > now + 30:
            return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
        if not isinstance(exp, int) or exp <= now:
            return ("'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
                    "the assertion expires")
        if exp - iat > 600 or exp > now + 600:
            return "'Expiration time' claim ('exp') is too far in the future"
        return None

    async def _repositories(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return self._error(401, "Bad credentials")
        return JSONResponse({"total_count": len(self.repositories),
                             "repositories": [{"name": name} for name in self.repositories]})

    def _api_authorised(self, request: Request) -> bool:
        # GitHub takes an installation token as `Bearer` or as the older `token` scheme.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and self.is_valid(token.strip())

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse({"message": message, "documentation_url": "https://docs.github.com/rest",
                             "status": str(status)}, status_code=status, headers=headers)


class FakeEntraID(FakeUpstream):
    """Microsoft Entra ID's v2.0 token endpoint, for a client credential that is a certificate
    (`private_key_jwt`, RFC 7523 section 2.2).

    `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`, `client_id`, `scope`,
    `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`: a JWT
    whose header's `x5t#S256` (or `x5t`, or `kid`) names a registered certificate, signed by its key (RS256, PS256
    or ES256), with `iss` = `sub` = the client ID, `aud` = the token URL, `exp` at most ten minutes after `nbf`,
    and a `jti` never seen before. A client secret beside the assertion is refused. Errors are Entra's:
    `{"error": "invalid_client", "error_description": "AADSTS...: ...", "error_codes", "trace_id",
    "correlation_id"}`. `register(private_key, certificate)` adds a credential; `token_path` is the route.
    """

    protected_path: ClassVar[str] = "/v1.0/users"

    def __init__(self, *, tenant: str = "contoso.onmicrosoft.com",
                 client_id: str = "00000000-0000-0000-0000-0000000c1d00", lifetime: float = 3600.0) -> None:
        self.tenant, self.client_id = tenant, client_id
        self.token_path = f"/{tenant}/oauth2/v2.0/token"
        self.token_url = ""  # set by whoever serves it: the `aud` this fake wants
        self.clock_offset = 0.0
        self._credentials: dict[str, Any] = {}  # x5t#S256, x5t or kid -> public key
        self._jtis: set[str] = set()
        self.last_form: dict[str, str] = {}
        self.last_header: dict[str, Any] = {}
        self.last_claims: dict[str, Any] = {}
        super().__init__(lifetime=lifetime)

    def register(self, private_key: str, certificate: str | None = None, *, kid: str | None = None) -> None:
        """Upload a certificate (or, Okta- and Keycloak-style, a public key under `kid`) for the app."""
        from tokend.signing import certificate_thumbprints, load_key

        jwk = _public_jwk(private_key)
        names = list(certificate_thumbprints(certificate, load_key(private_key)).values()) if certificate else []
        with self._lock:
            self._credentials.update({name: jwk for name in [*names, *([kid] if kid else [])]})

    def forget(self) -> None:
        """Delete every registered credential."""
        with self._lock:
            self._credentials.clear()

    def _routes(self) -> list[Route]:
        return [Route(self.token_path, self._token, methods=["POST"]),
                Route(self.protected_path, self._users, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered, form = await _login_form(self, request)
        if interfered is not None:
            return interfered
        with self._lock:
            self.last_form = form
        try:
            self._check(form)
        except _Refused as refused:
            return self._aad_error(refused.status, refused.error, refused.description)
        token = self._access_token()
        expires = self._expiry()
        self._issue(token, expires)
        return JSONResponse({"token_type": "Bearer", "expires_in": expires - int(time.time()),
                             "ext_expires_in": expires - int(time.time()), "access_token": token})

    def _check(self, form: Mapping[str, str]) -> None:
        if form.get("grant_type") != "client_credentials":
            raise _Refused(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            raise _Refused(400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                           f"'{form.get('client_id', '')[:40]}' was not found in the directory '{self.tenant}'.")
        if "client_secret" in form:
            raise _Refused(401, "invalid_client", "AADSTS50027: Two client credentials were presented.")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise _Refused(401, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or "
                           "'request' is required for the 'client_credentials' grant type.")
        if not form.get("scope", "").endswith("/.default"):
            raise _Refused(400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid. "
                           "Client credential flows must have a scope value with /.default suffixed to the "
                           "resource identifier.")
        with self._lock:
            keys = dict(self._credentials)
        try:
            header, claims = _verified(form.get("client_assertion", ""), keys, ["RS256", "PS256", "ES256"],
                                       lambda h: h.get("x5t#S256") or h.get("x5t") or h.get("kid") or "")
        except _Refused as refused:
            if refused.description == "unknown key id":
                raise _Refused(401, "invalid_client", "AADSTS700027: The certificate with identifier used to sign "
                               "the client assertion is not registered on application.") from None
            raise _Refused(401, "invalid_client", "AADSTS7000274: Key was found, but use of the key to verify "
                           "the signature failed.") from None
        with self._lock:
            self.last_header, self.last_claims = header, claims
        self._check_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            raise _Refused(401, "invalid_client", "AADSTS700021: Client assertion application identifier doesn't "
                           "match 'client_id' parameter.")
        if claims.get("aud") != self.token_url:
            raise _Refused(401, "invalid_client", f"AADSTS700212: No matching federated identity record found for "
                           f"presented assertion audience '{str(claims.get('aud'))[:80]}'.")
        now = time.time() + self.clock_offset
        nbf, exp = claims.get("nbf", claims.get("iat")), claims.get("exp")
        if not isinstance(nbf, int | float) or not isinstance(exp, int | float) or nbf > now + 300:
            raise _Refused(401, "invalid_client", "AADSTS700025: Client assertion is not within its valid time range.")
        if exp <= now - 300 or exp - nbf > 600:
            raise _Refused(401, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
        jti = claims.get("jti")
        with self._lock:
            seen = not isinstance(jti, str) or jti in self._jtis
            if isinstance(jti, str):
                self._jtis.add(jti)
        if seen:
            raise _Refused(401, "invalid_client", "AADSTS7000215: The client assertion has already been used "
                           "(jti replayed).")

    def _access_token(self) -> str:
        # Entra's access tokens are JWTs; this one is opaque-signed (alg none) but carries a real exp claim.
        claims = {"aud": "https://graph.microsoft.com", "appid": self.client_id, "exp": self._expiry(),
                  "jti": secrets.token_hex(8)}
        return f"{_b64url(_compact_json({'typ': 'JWT', 'alg': 'none'}))}.{_b64url(_compact_json(claims))}.x"

    def _aad_error(self, status: int, error: str, description: str) -> Response:
        trace = str(uuid.uuid4())
        code = int(description[6:].split(":", 1)[0]) if description.startswith("AADSTS") else 0
        return JSONResponse({"error": error, "error_description": f"{description} Trace ID: {trace} Correlation "
                             f"ID: {uuid.uuid4()} Timestamp: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ')}",
                             "error_codes": [code], "trace_id": trace, "correlation_id": str(uuid.uuid4())},
                            status_code=status)

    async def _users(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return self._error(401, "InvalidAuthenticationToken")
        return JSONResponse({"value": [{"displayName": "Demo User"}]})

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse({"error": {"code": message, "message": message}}, status_code=status, headers=headers)


class FakeSalesforce(FakeUpstream):
    """Salesforce's OAuth 2.0 JWT bearer flow for a connected app.

    `POST /services/oauth2/token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`: RS256,
    signed by the key of the certificate uploaded to the connected app, `iss` = its consumer key, `sub` = a user
    the app is pre-authorised for, `aud` = the login URL (`audience`), `exp` at most three minutes away (Salesforce
    allows a few minutes of skew). Answers `{"access_token", "scope", "instance_url", "id", "token_type":
    "Bearer"}` with no expires_in (the session lasts the org's timeout), or `400 {"error": "invalid_grant",
    "error_description": "..."}` / `invalid_client_id`.
    """

    protected_path: ClassVar[str] = "/services/data/v61.0/limits"

    def __init__(self, *, consumer_key: str = "3MVG9demoConsumerKey", username: str = "integration@example.com",
                 audience: str = "https://login.salesforce.com", lifetime: float = 7200.0) -> None:
        self.consumer_key, self.username, self.audience = consumer_key, username, audience
        self.clock_offset = 0.0
        self.private_key = new_private_key()
        self._key = _public_jwk(self.private_key)
        self.last_claims: dict[str, Any] = {}
        self.last_form: dict[str, str] = {}
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route(self.protected_path, self._limits, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered, form = await _login_form(self, request)
        if interfered is not None:
            return interfered
        with self._lock:
            self.last_form = form
        if form.get("grant_type") != FakeGoogle._GRANT:
            return _oauth_error(400, "unsupported_grant_type", "grant type not supported")
        try:
            _, claims = _verified(form.get("assertion", ""), {"app": self._key}, ["RS256"], lambda header: None)
        except _Refused:
            return _oauth_error(400, "invalid_grant", "invalid assertion")
        with self._lock:
            self.last_claims = claims
        if claims.get("iss") != self.consumer_key:
            return _oauth_error(400, "invalid_client_id", "client identifier invalid")
        if claims.get("aud") != self.audience:
            return _oauth_error(400, "invalid_grant", "audience is invalid")
        if claims.get("sub") != self.username:
            return _oauth_error(400, "invalid_grant", "user hasn't approved this consumer")
        if _check_times(claims, time.time() + self.clock_offset, max_lifetime=300, leeway=180) is not None:
            return _oauth_error(400, "invalid_grant", "expired authorization code")  # Salesforce's words for a bad exp
        token = "00D" + secrets.token_urlsafe(40)
        self._issue(token, self._expiry())
        return JSONResponse({"access_token": token, "scope": form.get("scope", "api"), "instance_url": "",
                             "id": "https://login.salesforce.com/id/00Dxx/005xx", "token_type": "Bearer",
                             "issued_at": str(int(time.time() * 1000))})

    async def _limits(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return JSONResponse([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                                status_code=401)
        return JSONResponse({"DailyApiRequests": {"Max": 15000, "Remaining": 14999}})
