"""A fake Salesforce token endpoint for the JWT bearer flow.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
    Refused,
    login_form,
    oauth_error,
)
from tokend.testing.google import FakeGoogle
from tokend.testing.keys import check_times, new_private_key, public_jwk, verified_jws


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
        self._key = public_jwk(self.private_key)
        self.last_claims: dict[str, Any] = {}
        self.last_form: dict[str, str] = {}
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route(self.protected_path, self._limits, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered, form = await login_form(self, request)
        if interfered is not None:
            return interfered
        with self._lock:
            self.last_form = form
        if form.get("grant_type") != FakeGoogle._GRANT:
            return oauth_error(400, "unsupported_grant_type", "grant type not supported")
        try:
            _, claims = verified_jws(form.get("assertion", ""), {"app": self._key}, ["RS256"], lambda header: None)
        except Refused:
            return oauth_error(400, "invalid_grant", "invalid assertion")
        with self._lock:
            self.last_claims = claims
        if claims.get("iss") != self.consumer_key:
            return oauth_error(400, "invalid_client_id", "client identifier invalid")
        if claims.get("aud") != self.audience:
            return oauth_error(400, "invalid_grant", "audience is invalid")
        if claims.get("sub") != self.username:
            return oauth_error(400, "invalid_grant", "user hasn't approved this consumer")
        if check_times(claims, time.time() + self.clock_offset, max_lifetime=300, leeway=180) is not None:
            return oauth_error(400, "invalid_grant", "expired authorization code")  # Salesforce's words for a bad exp
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
