"""A fake FinTech Studios: a static x-api-key plus an email/password login that answers a JWT.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
    b64url,
    b64url_decode,
    bearer_token,
    compact_json,
    equal,
    json_object,
)


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
        body = json_object(await request.body())
        if body is None:
            return self._error(400, "The request body must be a JSON object")
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return self._error(400, "email and password are required")
        if not (equal(email, self.email) and equal(password, self.password)):
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
        token = bearer_token(request)
        # is_valid() too: a revoked token still carries a good signature and exp.
        if token is None or not self._jwt_valid(token) or not self.is_valid(token):
            return self._error(401, "Unauthorized")
        return JSONResponse({"data": [{"id": "n-1", "title": "Markets open higher"}], "total": 1})

    def _api_key_ok(self, request: Request) -> bool:
        return equal(request.headers.get("x-api-key", ""), self.api_key)

    def _api_authorised(self, request: Request) -> bool:
        token = bearer_token(request)
        return self._api_key_ok(request) and token is not None and self._jwt_valid(token) and self.is_valid(token)

    def _sign(self, claims: dict[str, Any]) -> str:
        """An HS256 JWT, made by hand so that the fake needs no JWT library."""
        header = b64url(compact_json({"alg": "HS256", "typ": "JWT"}))
        payload = b64url(compact_json(claims))
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"

    def _jwt_valid(self, token: str) -> bool:
        """Checked as the real API would: our signature, and `exp` not reached."""
        header, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        expected = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(b64url(expected).encode(), signature.encode()):
            return False
        claims = json_object(b64url_decode(payload))
        expires = None if claims is None else claims.get("exp")
        return isinstance(expires, int) and time.time() < expires
