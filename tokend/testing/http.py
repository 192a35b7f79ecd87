"""A fake token API for the declarative `http` kind.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
    b64url,
    compact_json,
    equal,
    json_object,
)


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
        body = json_object(await request.body())
        if request.headers.get("x-client") != "demo" or body is None:
            return self._error(400, "X-Client header and a JSON body are required")
        if not (equal(str(body.get("user")), self.user) and equal(str(body.get("password")), self.password)):
            return self._error(401, "bad user or password")
        expires = self._expiry()
        if self.expiry_format == "jwt":
            claims = {"exp": expires, "jti": secrets.token_hex(8)}
            token = f"{b64url(compact_json({'alg': 'none'}))}.{b64url(compact_json(claims))}.x"
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
