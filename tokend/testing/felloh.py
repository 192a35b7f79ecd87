"""A fake Felloh: key pair logins with an absolute expiry, and its API key management.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    ALPHANUMERIC,
    Failure,
    FakeUpstream,
    accepts_json,
    bearer_token,
    equal,
    json_object,
    media_type_of,
    status_phrase,
)


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
        self._key_failures: dict[str, Failure] = {}
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
            self._key_failures[operation] = Failure(status, times, None, None)

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
        token = bearer_token(request)
        if token is None or not self.is_valid(token):
            return self._error(401, "A valid bearer token is required", title="Unauthorised")
        with self._lock:
            failure = self._key_failures.get(operation)
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times == 0:
                    del self._key_failures[operation]
        if failure is not None:
            return self._error(failure.status, status_phrase(failure.status))
        body = json_object(await request.body()) if operation != "delete" else {}
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
        body = json_object(await request.body())
        if body is None:
            return self._error(400, "The request body must be a JSON object")
        public_key, private_key = body.get("public_key"), body.get("private_key")
        if not isinstance(public_key, str) or not isinstance(private_key, str):
            return self._error(400, "public_key and private_key are required")
        with self._lock:
            pairs = [(key.public_key, key.secret_key) for key in self.keys.values()]
        if not any(equal(public_key, known) and equal(private_key, secret) for known, secret in pairs):
            return self._error(401, "The public or private key is not valid", title="Unauthorised")
        return self._new_token()

    def _check_mime_types(self, request: Request) -> Response | None:
        """Felloh speaks JSON only and says so: both headers are required."""
        if media_type_of(request.headers.get("content-type", "")) != "application/json":
            return self._error(415, "The Content-Type header must be application/json")
        if not accepts_json(request.headers.get("accept", "")):
            return self._error(406, "The Accept header must be application/json")
        return None

    def _new_token(self) -> Response:
        token = "".join(secrets.choice(ALPHANUMERIC) for _ in range(128))
        expires = self._expiry()
        self._issue(token, expires)
        data: dict[str, Any] = {"token": token, "expiry_time": self._reported_expiry(expires), "type": "BEARER"}
        if data["expiry_time"] is None:
            del data["expiry_time"]
        return _felloh_envelope(200, data)

    async def _organisations(self, request: Request) -> Response:
        token = bearer_token(request)
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
        errors = [{"title": title or status_phrase(status), "message": message}]
        return _felloh_envelope(status, {}, errors=errors, message=message, headers=headers)


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
    meta: dict[str, Any] = {"code": status, "reason": status_phrase(status), "message": message,
                            "request_id": str(uuid.uuid4())}
    if count is not None:
        meta["count"] = count
    body = {"data": data, "errors": errors or [], "meta": meta}
    return JSONResponse(body, status_code=status, headers=headers)
