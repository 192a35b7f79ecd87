"""A fake GitHub App API: app JWTs exchanged for installation tokens.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    ALPHANUMERIC,
    FakeUpstream,
    Refused,
    bearer_token,
    json_object,
)
from tokend.testing.keys import new_private_key, public_jwk, verified_jws


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
        self._key = public_jwk(self.private_key)
        self.last_headers: dict[str, str] = {}
        self.last_body: Any = None
        self.last_claims: dict[str, Any] = {}
        super().__init__(lifetime=lifetime)

    def rotate_key(self) -> None:
        """A new private key for the app; the old one is deleted on the app's page (its JWTs refused)."""
        private_key = new_private_key()
        with self._lock:
            self.private_key, self._key = private_key, public_jwk(private_key)

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
        refused = self._refused_jwt(bearer_token(request) or "")
        if refused is not None:
            return self._error(401, refused)
        if request.path_params["installation"] not in self.installations:
            return self._error(404, "Not Found")
        raw = await request.body()
        body = json_object(raw) if raw else {}
        if body is None:
            return self._error(400, "Problems parsing JSON")
        with self._lock:
            self.last_body = body if raw else None
        unknown = [name for name in body.get("repositories", []) if name not in self.repositories]
        if unknown:
            return self._error(422, "There is at least one repository that does not exist or is not accessible to "
                               "the parent installation.")
        token = "ghs_" + "".join(secrets.choice(ALPHANUMERIC) for _ in range(36))
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
            _, claims = verified_jws(assertion, {"app": key}, ["RS256"], lambda header: None)
        except Refused:
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
