"""A fake Microsoft Entra ID token endpoint: client secrets and certificate assertions.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
    Refused,
    b64url,
    compact_json,
    login_form,
)
from tokend.testing.keys import public_jwk, verified_jws


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
        from tokend.providers.signing_keys import certificate_thumbprints, load_key

        jwk = public_jwk(private_key)
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
        interfered, form = await login_form(self, request)
        if interfered is not None:
            return interfered
        with self._lock:
            self.last_form = form
        try:
            self._check(form)
        except Refused as refused:
            return self._aad_error(refused.status, refused.error, refused.description)
        token = self._access_token()
        expires = self._expiry()
        self._issue(token, expires)
        return JSONResponse({"token_type": "Bearer", "expires_in": expires - int(time.time()),
                             "ext_expires_in": expires - int(time.time()), "access_token": token})

    def _check(self, form: Mapping[str, str]) -> None:
        if form.get("grant_type") != "client_credentials":
            raise Refused(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            raise Refused(400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                           f"'{form.get('client_id', '')[:40]}' was not found in the directory '{self.tenant}'.")
        if "client_secret" in form:
            raise Refused(401, "invalid_client", "AADSTS50027: Two client credentials were presented.")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise Refused(401, "invalid_client", "AADSTS7000216: 'client_assertion', 'client_secret' or "
                           "'request' is required for the 'client_credentials' grant type.")
        if not form.get("scope", "").endswith("/.default"):
            raise Refused(400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid. "
                           "Client credential flows must have a scope value with /.default suffixed to the "
                           "resource identifier.")
        with self._lock:
            keys = dict(self._credentials)
        try:
            header, claims = verified_jws(form.get("client_assertion", ""), keys, ["RS256", "PS256", "ES256"],
                                       lambda h: h.get("x5t#S256") or h.get("x5t") or h.get("kid") or "")
        except Refused as refused:
            if refused.description == "unknown key id":
                raise Refused(401, "invalid_client", "AADSTS700027: The certificate with identifier used to sign "
                               "the client assertion is not registered on application.") from None
            raise Refused(401, "invalid_client", "AADSTS7000274: Key was found, but use of the key to verify "
                           "the signature failed.") from None
        with self._lock:
            self.last_header, self.last_claims = header, claims
        self._check_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            raise Refused(401, "invalid_client", "AADSTS700021: Client assertion application identifier doesn't "
                           "match 'client_id' parameter.")
        if claims.get("aud") != self.token_url:
            raise Refused(401, "invalid_client", f"AADSTS700212: No matching federated identity record found for "
                           f"presented assertion audience '{str(claims.get('aud'))[:80]}'.")
        now = time.time() + self.clock_offset
        nbf, exp = claims.get("nbf", claims.get("iat")), claims.get("exp")
        if not isinstance(nbf, int | float) or not isinstance(exp, int | float) or nbf > now + 300:
            raise Refused(401, "invalid_client", "AADSTS700025: Client assertion is not within its valid time range.")
        if exp <= now - 300 or exp - nbf > 600:
            raise Refused(401, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
        jti = claims.get("jti")
        with self._lock:
            seen = not isinstance(jti, str) or jti in self._jtis
            if isinstance(jti, str):
                self._jtis.add(jti)
        if seen:
            raise Refused(401, "invalid_client", "AADSTS7000215: The client assertion has already been used "
                           "(jti replayed).")

    def _access_token(self) -> str:
        # Entra's access tokens are JWTs; this one is opaque-signed (alg none) but carries a real exp claim.
        claims = {"aud": "https://graph.microsoft.com", "appid": self.client_id, "exp": self._expiry(),
                  "jti": secrets.token_hex(8)}
        return f"{b64url(compact_json({'typ': 'JWT', 'alg': 'none'}))}.{b64url(compact_json(claims))}.x"

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
