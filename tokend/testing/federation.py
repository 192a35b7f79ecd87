"""Fake upstreams for keyless logins: a platform's OIDC issuer, and the services that exchange its tokens.

    FakeOIDCIssuer        signs subject tokens (RS256, JWKS at /.well-known/jwks.json), writes token files as
                          the kubelet does, and serves GitHub Actions' job token endpoint
    FakeGoogleFederation  Google's Security Token Service and IAM Service Account Credentials API
    FakeTokenExchange     an RFC 8693 authorization server
    FakeEntraFederated    Entra ID's token endpoint for a federated credential (workload identity)

Every one verifies a subject token as the real service does: the issuer's signature (from its JWKS), `iss`,
`aud` and `exp`; and refuses in the service's own words. Run each with `tokend.testing.FakeServer`.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import FakeUpstream, Refused, bearer_token, json_object, oauth_error
from tokend.testing.google import google_error
from tokend.testing.keys import new_private_key, public_jwk, verified_jws

__all__ = ["FakeEntraFederated", "FakeGoogleFederation", "FakeOIDCIssuer", "FakeTokenExchange"]

_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
ENTRA_AUDIENCE = "api://AzureADTokenExchange"


class FakeOIDCIssuer:
    """An OIDC issuer of a platform (a Kubernetes cluster, GitHub Actions): it signs subject tokens.

    `issue(audience, subject, lifetime)` signs one; `write(path, audience)` replaces a token file in place as the
    kubelet does (a new file renamed over the old). Served (`app`): `/.well-known/openid-configuration`,
    `/.well-known/jwks.json`, and GitHub's job token endpoint `GET /_apis/token?api-version=2.0&audience=AUD`
    with `Authorization: Bearer {request_token}`, answering `{"value": JWT}`. `verify(token, audience)` checks a
    token as a relying party does (signature, iss, aud, exp) and returns its claims, or raises Refused.
    """

    def __init__(self, *, subject: str = "system:serviceaccount:apps:billing", lifetime: float = 600.0) -> None:
        from starlette.applications import Starlette

        self.url = ""  # set by whoever serves it: the `iss` of its tokens
        self.subject = subject
        self.lifetime = lifetime
        self.request_token = secrets.token_urlsafe(24)
        self.kid = secrets.token_hex(8)
        self._private_key = new_private_key()
        self._jwk = public_jwk(self._private_key)
        self._lock = threading.Lock()
        self.issued: list[str] = []
        self.requests = 0  # job token requests answered
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery, methods=["GET"]),
            Route("/.well-known/jwks.json", self._jwks, methods=["GET"]),
            Route("/_apis/token", self._job_token, methods=["GET"]),
        ])

    def issue(self, audience: str, *, subject: str | None = None, lifetime: float | None = None) -> str:
        from tokend.providers.signing_keys import load_key

        now = int(time.time())
        claims = {"iss": self.url, "sub": subject or self.subject, "aud": audience, "iat": now, "nbf": now,
                  "exp": now + int(self.lifetime if lifetime is None else lifetime), "jti": str(uuid.uuid4())}
        token = load_key(self._private_key).sign(claims, alg="RS256", header={"kid": self.kid, "typ": "JWT"})
        with self._lock:
            self.issued.append(token)
        return token

    def write(self, path: Path, audience: str, *, lifetime: float | None = None) -> str:
        """A new token in `path`, swapped in whole (readers never see half a file), as the kubelet rotates one."""
        token = self.issue(audience, lifetime=lifetime)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        temporary.write_text(token)
        temporary.replace(path)
        return token

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        _, claims = verified_jws(token, {self.kid: self._jwk}, ["RS256"], lambda header: header.get("kid"))
        if claims.get("iss") != self.url:
            raise Refused(400, "invalid_grant", "The issuer of the subject token is not trusted.")
        aud = claims.get("aud")
        audiences: list[Any] = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            raise Refused(400, "invalid_grant", "The audience in the subject token does not match.")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            raise Refused(400, "invalid_grant", "The subject token has expired.")
        return claims

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse({"issuer": self.url, "jwks_uri": f"{self.url}/.well-known/jwks.json",
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [{**self._jwk.as_dict(private=False), "kid": self.kid, "use": "sig",
                                       "alg": "RS256"}]})

    async def _job_token(self, request: Request) -> Response:
        if bearer_token(request) != self.request_token:
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        if request.query_params.get("api-version") != "2.0":
            return JSONResponse({"message": "api-version 2.0 is required"}, status_code=400)
        with self._lock:
            self.requests += 1
        return JSONResponse({"count": 1, "value": self.issue(request.query_params.get("audience") or self.url)})


class FakeGoogleFederation(FakeUpstream):
    """Google's STS (`POST /v1/token`) and IAM Service Account Credentials API (`POST /v1/projects/-/
    serviceAccounts/EMAIL:generateAccessToken` and `:generateIdToken`) on one server.

    STS takes a token exchange whose `audience` is `pool_provider` and whose subject token `issuer` signed for
    `allowed_audience` (the pool provider's default allowed audience: `https:` + the provider's resource name),
    and answers a federated token. The IAM methods take, as Bearer, a federated token or any token `also_trust`
    says is valid (a service account key's, from FakeGoogle), and answer for the accounts in `service_accounts`
    unless `deny(email)` took the caller's Token Creator role away (403 PERMISSION_DENIED). `logins` counts
    STS exchanges; `iam_calls` the IAM ones.
    """

    protected_path: ClassVar[str] = "/storage/v1/b"

    def __init__(self, issuer: FakeOIDCIssuer, *,
                 pool_provider: str = ("//iam.googleapis.com/projects/123456789/locations/global/"
                                       "workloadIdentityPools/tokend-pool/providers/tokend-provider"),
                 service_accounts: tuple[str, ...] = ("deployer@demo-project.iam.gserviceaccount.com",),
                 lifetime: float = 3600.0, also_trust: Any = None) -> None:
        self.issuer = issuer
        self.pool_provider = pool_provider
        self.allowed_audience = "https:" + pool_provider
        self.service_accounts = set(service_accounts)
        self.also_trust = also_trust  # a callable(token) -> bool: other tokens allowed to impersonate
        self.iam_calls = 0
        self.last_sts_form: dict[str, str] = {}
        self.last_iam_body: dict[str, Any] = {}
        self._denied: set[str] = set()
        self._federated: set[str] = set()
        self._google_key: str | None = None  # Google's ID token key, made at the first generateIdToken
        super().__init__(lifetime=lifetime)

    def deny(self, email: str) -> None:
        """Take the caller's roles/iam.serviceAccountTokenCreator on `email` away."""
        with self._lock:
            self._denied.add(email)

    def allow(self, email: str) -> None:
        with self._lock:
            self._denied.discard(email)

    def _routes(self) -> list[Route]:
        return [Route("/v1/token", self._sts, methods=["POST"]),
                Route("/v1/projects/-/serviceAccounts/{call:path}", self._iam, methods=["POST"]),
                Route(self.protected_path, self._buckets, methods=["GET"])]

    async def _sts(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        if "authorization" in request.headers:
            return oauth_error(400, "invalid_request", "The STS token exchange takes no Authorization header.")
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        with self._lock:
            self.last_sts_form = {key: value for key, value in form.items() if key != "subject_token"}
        if form.get("grant_type") != _TOKEN_EXCHANGE:
            return oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        if form.get("audience") != self.pool_provider:
            return oauth_error(400, "invalid_target", "The target service indicated by the \"audience\" parameters "
                                "is invalid. This might either be because the pool or provider is disabled or deleted "
                                "or because it doesn't exist.")
        if form.get("subject_token_type") != _JWT_TYPE or form.get("requested_token_type") != _ACCESS_TOKEN_TYPE:
            return oauth_error(400, "invalid_request", "Invalid subject_token_type or requested_token_type.")
        if not form.get("scope"):
            return oauth_error(400, "invalid_scope", "Scope is required.")
        try:
            self.issuer.verify(form.get("subject_token", ""), self.allowed_audience)
        except Refused as refused:
            return oauth_error(400, "invalid_grant", refused.description)
        token = "ya29.fed-" + secrets.token_urlsafe(32)
        expires = self._expiry()
        self._issue(token, expires)
        with self._lock:
            self._federated.add(token)
        return JSONResponse({"access_token": token, "issued_token_type": _ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                             "expires_in": expires - int(time.time())})

    async def _iam(self, request: Request) -> Response:
        email, _, method = request.path_params["call"].rpartition(":")
        with self._lock:
            self.iam_calls += 1
        caller = bearer_token(request) or ""
        trusted = self.is_valid(caller) or (self.also_trust is not None and self.also_trust(caller))
        if not trusted:
            return google_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                 "token, login cookie or other valid authentication credential.")
        body = json_object(await request.body())
        if body is None or method not in ("generateAccessToken", "generateIdToken"):
            return google_error(400, "Invalid JSON payload received.")
        with self._lock:
            self.last_iam_body = body
            denied = email in self._denied or any(
                delegate.rpartition("/")[2] in self._denied for delegate in body.get("delegates", []))
        if email not in self.service_accounts or denied:
            return _permission_denied(email, method)
        if method == "generateIdToken":
            return self._id_token(email, body)
        return self._access_token(email, body)

    def _access_token(self, email: str, body: dict[str, Any]) -> Response:
        scopes, lifetime = body.get("scope"), str(body.get("lifetime", "3600s"))
        if not isinstance(scopes, list) or not scopes:
            return google_error(400, "Scope required.")
        if not lifetime.endswith("s") or not lifetime[:-1].isdigit() or not 0 < int(lifetime[:-1]) <= 3600:
            return google_error(400, "The lifetime must be between 1s and 3600s (or 43200s where the "
                                 "organisation allows it).")
        expires = min(self._expiry(), int(time.time()) + int(lifetime[:-1]))
        token = "ya29.sa-" + secrets.token_urlsafe(32)
        self._issue(token, expires)
        return JSONResponse({"accessToken": token, "expireTime": datetime.fromtimestamp(expires, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")})

    def _id_token(self, email: str, body: dict[str, Any]) -> Response:
        from tokend.providers.signing_keys import load_key

        audience = body.get("audience")
        if not isinstance(audience, str) or not audience:
            return google_error(400, "Audience is required.")
        now, expires = int(time.time()), self._expiry()
        claims = {"iss": "https://accounts.google.com", "aud": audience, "azp": email, "sub": "1234567890",
                  "iat": now, "exp": expires, **({"email": email, "email_verified": True}
                                                        if body.get("includeEmail") else {})}
        with self._lock:
            if self._google_key is None:
                self._google_key = new_private_key()
            key = self._google_key
        token = load_key(key).sign(claims, alg="RS256", header={"kid": "google-1"})
        self._issue(token, expires)
        return JSONResponse({"token": token})

    async def _buckets(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return google_error(401, "Invalid Credentials")
        return JSONResponse({"kind": "storage#buckets", "items": [{"name": "demo-bucket"}]})

    def _error(self, status: int, message: str, headers: Any = None) -> Response:
        return google_error(status, message, headers)


def _permission_denied(email: str, method: str) -> Response:
    permission = "getAccessToken" if method == "generateAccessToken" else "getOpenIdToken"
    metadata = {"permission": f"iam.serviceAccounts.{permission}", "resource": f"projects/-/serviceAccounts/{email}"}
    return JSONResponse({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": (
        f"Permission 'iam.serviceAccounts.{permission}' denied on resource (or it may not exist)."),
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                     "domain": "iam.googleapis.com", "metadata": metadata}]}}, status_code=403)


class FakeTokenExchange(FakeUpstream):
    """An RFC 8693 authorization server: `POST /oauth2/token` with grant_type token-exchange, a subject token
    that `issuer` signed for `subject_audience`, optionally a client (HTTP Basic `client_id`/`client_secret`).
    Answers `{"access_token", "issued_token_type", "token_type": "Bearer", "expires_in"}`; refusals are
    section 5.2 errors. `last_fields` keeps every field of the last request (repeated ones as lists), the
    subject token left out."""

    protected_path: ClassVar[str] = "/api/resource"

    def __init__(self, issuer: FakeOIDCIssuer, *, subject_audience: str = "https://sts.example.com",
                 client: tuple[str, str] | None = None, lifetime: float = 3600.0) -> None:
        self.issuer, self.subject_audience, self.client = issuer, subject_audience, client
        self.last_fields: dict[str, list[str]] = {}
        self.subjects: list[str] = []  # the `sub` of each subject token exchanged
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [Route("/oauth2/token", self._token, methods=["POST"]),
                Route(self.protected_path, self._resource, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        form = {key: values[0] for key, values in fields.items()}
        with self._lock:
            self.last_fields = {key: values for key, values in fields.items() if key != "subject_token"}
        if self.client is not None and not self._client_ok(request):
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        if form.get("grant_type") != _TOKEN_EXCHANGE:
            return oauth_error(400, "unsupported_grant_type", "Only token exchange is supported.")
        if form.get("subject_token_type") != _JWT_TYPE:
            return oauth_error(400, "invalid_request", "subject_token_type must be a JWT.")
        try:
            claims = self.issuer.verify(form.get("subject_token", ""), self.subject_audience)
        except Refused as refused:
            return oauth_error(400, "invalid_grant", refused.description)
        token = secrets.token_urlsafe(32)
        expires = self._expiry()
        self._issue(token, expires)
        with self._lock:
            self.subjects.append(str(claims.get("sub")))
        return JSONResponse({"access_token": token, "issued_token_type": _ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                             "expires_in": expires - int(time.time())}, headers={"Cache-Control": "no-store"})

    def _client_ok(self, request: Request) -> bool:
        import base64

        assert self.client is not None
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            pair = base64.b64decode(value).decode() if scheme.lower() == "basic" else ""
        except ValueError:
            return False
        client_id, _, secret = pair.partition(":")
        return (urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)) == self.client

    async def _resource(self, request: Request) -> Response:
        return JSONResponse({"ok": True} if self._api_authorised(request) else {"error": "invalid_token"},
                            status_code=200 if self._api_authorised(request) else 401)


class FakeEntraFederated(FakeUpstream):
    """Entra ID's v2.0 token endpoint for an app with a federated identity credential (workload identity).

    `POST /{tenant}/oauth2/v2.0/token`, `grant_type=client_credentials`, `client_id`, `scope` (`.../.default`),
    `client_assertion_type=...:jwt-bearer` and `client_assertion`: the platform's token, signed by `issuer`,
    with `iss` = the issuer, `sub` = the federated credential's subject and `aud` = `api://AzureADTokenExchange`.
    An expired assertion is AADSTS700024, as Entra answers a projected token read once and kept too long.
    """

    protected_path: ClassVar[str] = "/v1.0/users"

    def __init__(self, issuer: FakeOIDCIssuer, *, tenant: str = "contoso.onmicrosoft.com",
                 client_id: str = "00000000-0000-0000-0000-00000000f0ed", subject: str | None = None,
                 lifetime: float = 3600.0) -> None:
        self.issuer, self.tenant, self.client_id = issuer, tenant, client_id
        self.subject = subject or issuer.subject
        self.token_path = f"/{tenant}/oauth2/v2.0/token"
        self.last_form: dict[str, str] = {}
        super().__init__(lifetime=lifetime)

    def _routes(self) -> list[Route]:
        return [Route(self.token_path, self._token, methods=["POST"]),
                Route(self.protected_path, self._users, methods=["GET"])]

    async def _token(self, request: Request) -> Response:
        interfered = await self._login_attempt(request)
        if interfered is not None:
            return interfered
        form = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace")))
        with self._lock:
            self.last_form = {key: value for key, value in form.items() if key != "client_assertion"}
        refused = self._refusal(form)
        if refused is not None:
            return _aad_error(*refused)
        token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(48)
        expires = self._expiry()
        self._issue(token, expires)
        return JSONResponse({"token_type": "Bearer", "expires_in": expires - int(time.time()),
                             "ext_expires_in": expires - int(time.time()), "access_token": token})

    def _refusal(self, form: dict[str, str]) -> tuple[int, str, str] | None:
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id:
            return 400, "unauthorized_client", f"AADSTS700016: Application with identifier was not found in the " \
                f"directory '{self.tenant}'."
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return 401, "invalid_client", "AADSTS7000216: 'client_assertion' is required."
        if not form.get("scope", "").endswith("/.default"):
            return 400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid."
        try:
            claims = self.issuer.verify(form.get("client_assertion", ""), ENTRA_AUDIENCE)
        except Refused as refused:
            if "expired" in refused.description:
                return 400, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range."
            return 401, "invalid_client", f"AADSTS700211: No matching federated identity record found for " \
                f"presented assertion ({refused.description})"
        if claims.get("sub") != self.subject:
            return 401, "invalid_client", "AADSTS700213: No matching federated identity record found for " \
                "presented assertion subject."
        return None

    async def _users(self, request: Request) -> Response:
        if not self._api_authorised(request):
            return JSONResponse({"error": {"code": "InvalidAuthenticationToken"}}, status_code=401)
        return JSONResponse({"value": [{"displayName": "Demo User"}]})


def _aad_error(status: int, error: str, description: str) -> Response:
    trace = str(uuid.uuid4())
    return JSONResponse({"error": error, "error_description": f"{description} Trace ID: {trace}",
                         "error_codes": [int(description[6:].split(":", 1)[0])], "trace_id": trace,
                         "correlation_id": str(uuid.uuid4())}, status_code=status)
