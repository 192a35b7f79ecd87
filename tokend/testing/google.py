"""A fake Google OAuth 2.0 token endpoint for service account JWTs (and the IAM it stands for).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
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
from tokend.testing.keys import check_times, new_private_key, public_jwk, verified_jws


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
        self._keys = {self.private_key_id: public_jwk(self.private_key)}
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
            self._keys = {key_id: public_jwk(private_key)}

    def _routes(self) -> list[Route]:
        return [Route("/token", self._token, methods=["POST"]),
                Route(self.protected_path, self._buckets, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered, form = await login_form(self, request)
        if interfered is not None:
            return interfered
        if form.get("grant_type") != self._GRANT:
            return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
        try:
            claims = self._checked(form.get("assertion", ""))
        except Refused as refused:
            return oauth_error(refused.status, refused.error, refused.description)
        now = int(time.time())
        if "target_audience" in claims:
            token = self._id_token(str(claims["target_audience"]), now)
            self._issue(token, self._expiry())
            return JSONResponse({"id_token": token})
        if not claims.get("scope"):
            return oauth_error(400, "invalid_scope", "Empty or missing scope not allowed.")
        token = "ya29." + secrets.token_urlsafe(48)
        expires = self._expiry()
        self._issue(token, expires)
        return JSONResponse({"access_token": token, "expires_in": expires - now, "token_type": "Bearer"})

    def _checked(self, assertion: str) -> dict[str, Any]:
        with self._lock:
            keys = dict(self._keys)
        try:
            header, claims = verified_jws(assertion, keys, ["RS256"], lambda header: header.get("kid", ""))
        except Refused:
            raise Refused(400, "invalid_grant", "Invalid JWT Signature.") from None
        with self._lock:
            self.last_header, self.last_claims = header, claims
        if claims.get("iss") != self.client_email:
            raise Refused(400, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self.token_uri:
            raise Refused(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        if check_times(claims, time.time() + self.clock_offset, max_lifetime=3600) is not None:
            raise Refused(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                           "in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        return claims

    def _id_token(self, audience: str, now: int) -> str:
        from tokend.providers.signing_keys import load_key

        claims = {"iss": "https://accounts.google.com", "aud": audience, "azp": self.client_email,
                  "email": self.client_email, "email_verified": True, "sub": "1234567890", "iat": now,
                  "exp": self._expiry()}
        return load_key(self._google_key).sign(claims, alg="RS256", header={"kid": "google-1"})

    async def _buckets(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return google_error(401, "Invalid Credentials")
        return JSONResponse({"kind": "storage#buckets", "items": [{"name": "demo-bucket"}]})

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return google_error(status, message, headers)


def google_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": status, "message": message, "errors": [{"message": message}]}},
                        status_code=status, headers=headers)
