"""Fake OAuth 2.0 servers: client credentials (FakeOAuth2), and an authorization server with refresh tokens
that rotate, the device authorization grant and revocation (FakeAuthorizationServer).
"""

from __future__ import annotations

import asyncio
import base64
import html
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
    bearer_token,
    equal,
)


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
        if client is None or not (equal(client[0], self.client_id) and equal(client[1], self.client_secret)):
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
        token = bearer_token(request)
        if token is None or not self.is_valid(token):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"ok": True})


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
        token = bearer_token(request)
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
            return equal(form.get("client_id", ""), self.client_id) and "client_secret" not in form
        if authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            client_id, _, client_secret = pair.partition(":")
            given = urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(client_secret)
        else:
            given = form.get("client_id", ""), form.get("client_secret", "")
        return equal(given[0], self.client_id) and equal(given[1], self.client_secret)

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
