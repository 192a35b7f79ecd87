"""A fake AWS: STS and a service behind it, both checking every Signature Version 4 signature as AWS does,
by recomputing it from the request as received (its method, raw path and query, headers and body).

    sts = FakeSTS()
    key_id, secret = sts.add_user("alice")              # a long-term access key pair
    sts.add_role("arn:aws:iam::123456789012:role/app")  # a role alice may assume
    with FakeServer(sts.app) as server: ...             # point tokend's sts_url at server.url

Served Query actions: AssumeRole, GetSessionToken and GetCallerIdentity (the "whoami" any SDK or the AWS
CLI can call with endpoint_url; it answers the ARN of whoever signed, so a test sees which credentials were
used). A `POST /` with ECR's `X-Amz-Target` is ECR's GetAuthorizationToken (JSON 1.1, service `ecr`): a
registry password of `ecr_lifetime` seconds, for the registry `ACCOUNT.dkr.ecr.REGION.amazonaws.com`.
Any other path is a fake service (`GET/POST/PUT /anything`), which answers JSON (XML for S3) naming the
caller and the body's SHA-256, so a proxied or SDK request can be checked too; `service` in the scope
decides which service name it accepts.

Switches: `throttle(times)` (STS's 400 Throttling), `fail(...)` from FakeUpstream, `expire_sessions()`
(every session issued so far answers ExpiredToken), `require_region(region)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.providers.aws.sigv4 import UNSIGNED_PAYLOAD, canonical_request, signature, string_to_sign
from tokend.testing.base import FakeUpstream, Refused

__all__ = ["ACCOUNT", "FakeSTS", "Session"]

ACCOUNT = "123456789012"
_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_ALNUM = string.ascii_uppercase + string.digits
MAX_SKEW = 300  # AWS refuses a request signed more than five minutes away from its clock
CHAINED_MAX = 3600
ECR_TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."


@dataclass
class Session:
    """Temporary credentials the fake issued."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expires: float
    arn: str  # who they act as (an assumed role, or the user of GetSessionToken)
    chained: bool = False  # issued for a role assumed with a role's credentials


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeSTS(FakeUpstream):
    """STS (and a service) checking SigV4; `lifetime` caps the sessions it issues (a short demo)."""

    def __init__(self, *, lifetime: float = 43200.0, service: str = "sts", ecr_lifetime: float = 43200.0) -> None:
        super().__init__(lifetime=lifetime)
        self.ecr_lifetime = ecr_lifetime
        self.ecr_passwords: list[str] = []  # every registry password issued, in order
        self.users: dict[str, tuple[str, str]] = {}  # access key id -> (secret, user ARN)
        self.roles: dict[str, int] = {}  # role ARN -> its maximum session duration
        self.sessions: dict[str, Session] = {}  # access key id -> the session
        self.calls: list[tuple[str, str]] = []  # (action or path, the caller's ARN) of every accepted request
        self.service = service
        self.region: str | None = None  # the region requests must be signed for; None: any
        # AssumeRoleWithWebIdentity: the OIDC issuer trusted (its `verify(token, audience)`), and the audience
        self._web_identity: tuple[Callable[[str, str], dict[str, Any]], str] | None = None
        self.web_identity_tokens: list[str] = []  # every web identity token accepted, in order
        self._throttled = 0
        self._aws_lock = threading.Lock()

    # -- setting it up, from the test's thread -------------------------------------------------------------

    def add_user(self, name: str = "alice") -> tuple[str, str]:
        """A long-term access key pair of a new IAM user: (access key id, secret access key)."""
        key_id, secret = "AKIA" + "".join(secrets.choice(_ALNUM) for _ in range(16)), secrets.token_urlsafe(30)
        with self._aws_lock:
            self.users[key_id] = (secret, f"arn:aws:iam::{ACCOUNT}:user/{name}")
        return key_id, secret

    def add_role(self, arn: str, *, max_duration: int = 3600) -> str:
        with self._aws_lock:
            self.roles[arn] = max_duration
        return arn

    def trust(self, issuer: Any, audience: str = "sts.amazonaws.com") -> None:
        """Accept AssumeRoleWithWebIdentity with tokens of `issuer` (a FakeOIDCIssuer: signature from its JWKS,
        iss, aud, exp), as an IAM OIDC identity provider with that audience does."""
        with self._aws_lock:
            self._web_identity = issuer.verify, audience

    def throttle(self, times: int) -> None:
        """Answer the next `times` STS calls 400 Throttling ("Rate exceeded"), as STS does."""
        with self._aws_lock:
            self._throttled = times

    def expire_sessions(self) -> None:
        """Every session issued so far is past its expiry from now on (ExpiredToken)."""
        with self._aws_lock:
            for session in self.sessions.values():
                session.expires = time.time() - 1

    def require_region(self, region: str | None) -> None:
        self.region = region

    def caller(self, access_key_id: str) -> str | None:
        """The ARN a key acts as, or None when the fake never issued it."""
        with self._aws_lock:
            if access_key_id in self.users:
                return self.users[access_key_id][1]
            session = self.sessions.get(access_key_id)
        return None if session is None else session.arn

    # -- the app ---------------------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [Route("/", self._sts, methods=["POST"]),
                Route("/{path:path}", self._service, methods=["GET", "POST", "PUT", "DELETE", "HEAD"])]

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        code = "Throttling" if status == 429 else "InternalFailure" if status >= 500 else "InvalidAction"
        return _error_response(_Error(status, code, message), headers)

    async def _sts(self, request: Request) -> Response:
        if (replaced := await self._login_attempt(request)) is not None:
            return replaced
        body = await request.body()
        if request.headers.get("x-amz-target", "").startswith(ECR_TARGET_PREFIX):
            return self._ecr(request, body)
        params = dict(urllib.parse.parse_qsl(body.decode()))
        if params.get("Action") == "AssumeRoleWithWebIdentity":  # unsigned: the token is the proof
            try:
                answer = self._assume_role_with_web_identity(params)
            except _Error as exc:
                return _error_response(exc)
            return Response(answer, media_type="text/xml")
        try:
            session = self._verified(request, body, "sts")
            action = params.get("Action", "")
            with self._aws_lock:
                if self._throttled and action != "GetCallerIdentity":
                    self._throttled -= 1
                    raise _Error(400, "Throttling", "Rate exceeded")
            answer = self._act(action, params, session)
        except _Error as exc:
            return _error_response(exc)
        with self._aws_lock:
            self.calls.append((params.get("Action", ""), session.arn))
        return Response(answer, media_type="text/xml")

    async def _service(self, request: Request) -> Response:
        body = await request.body()
        try:
            session = self._verified(request, body, self.service)
        except _Error as exc:
            return JSONResponse({"__type": exc.code, "message": exc.message}, status_code=exc.status)
        path = "/" + request.path_params["path"]
        with self._aws_lock:
            self.calls.append((path, session.arn))
        seen = {"caller": session.arn, "method": request.method, "path": path,
                "body_sha256": hashlib.sha256(body).hexdigest()}
        if self.service == "s3":  # XML, as S3 answers (an SDK reads an S3 answer that is not XML as an error)
            fields = "".join(f"<{key}>{escape(value)}</{key}>" for key, value in seen.items())
            return Response(f"<Result>{fields}</Result>", media_type="application/xml")
        return JSONResponse(seen)

    def _ecr(self, request: Request, body: bytes) -> Response:
        """ECR's GetAuthorizationToken, as its JSON 1.1 protocol answers it."""
        try:
            session = self._verified(request, body, "ecr")
        except _Error as exc:
            return JSONResponse({"__type": exc.code, "message": exc.message}, status_code=exc.status)
        target = request.headers["x-amz-target"].removeprefix(ECR_TARGET_PREFIX)
        if target != "GetAuthorizationToken" or request.headers.get("content-type") != "application/x-amz-json-1.1":
            return JSONResponse({"__type": "UnknownOperationException"}, status_code=400)
        region = _authorization(request.headers["authorization"])["Credential"].split("/")[2]
        password = "eyJ" + secrets.token_urlsafe(90)
        expires = int(time.time() + min(self.ecr_lifetime, self.lifetime))
        self._issue(password, expires)
        with self._aws_lock:
            self.ecr_passwords.append(password)
            self.calls.append(("GetAuthorizationToken", session.arn))
        encoded = base64.b64encode(f"AWS:{password}".encode()).decode()
        return JSONResponse({"authorizationData": [{
            "authorizationToken": encoded, "expiresAt": expires,
            "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{region}.amazonaws.com"}]},
            media_type="application/x-amz-json-1.1")

    # -- checking a signature --------------------------------------------------------------------------------

    def _verified(self, request: Request, body: bytes, service: str) -> Session:
        """Who signed the request, or _Error as AWS answers a bad signature."""
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"]]
        found = {name.lower(): value for name, value in headers}
        fields = _authorization(found.get("authorization", ""))
        credential = fields.get("Credential", "").split("/")
        if len(credential) != 5 or credential[4] != "aws4_request" or "SignedHeaders" not in fields:
            raise _Error(403, "IncompleteSignature", "The request signature does not conform to AWS standards.")
        key_id, day, region, signed_service, _ = credential
        if signed_service != service or (self.region is not None and region != self.region):
            raise _Error(403, "SignatureDoesNotMatch", f"Credential should be scoped to a valid region and service "
                         f"{service}, not {region}/{signed_service}.")
        stamp = found.get("x-amz-date", "")
        when = _parse_stamp(stamp)
        if when is None or abs(when - time.time()) > MAX_SKEW or stamp[:8] != day:
            raise _Error(403, "SignatureDoesNotMatch", "Signature expired: the request time is too far off.")
        secret, who = self._key(key_id, found.get("x-amz-security-token"))
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or ("x-amz-security-token" in found and "x-amz-security-token" not in signed):
            raise _Error(403, "SignatureDoesNotMatch", "Host and X-Amz-Security-Token must be signed.")
        payload = found.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
        if payload not in (UNSIGNED_PAYLOAD, hashlib.sha256(body).hexdigest()):
            raise _Error(400, "XAmzContentSHA256Mismatch", "The provided x-amz-content-sha256 header does not "
                         "match what was computed.")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        canonical = canonical_request(request.method, raw_path.decode("latin-1"),
                                      request.scope["query_string"].decode("latin-1"), headers, signed, payload,
                                      normalize=service != "s3")
        expected = signature(secret, day, region, service,
                             string_to_sign(stamp, f"{day}/{region}/{service}/aws4_request", canonical))
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            raise _Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                         "signature you provided. Check your AWS Secret Access Key and signing method.")
        return who

    def _key(self, key_id: str, token: str | None) -> tuple[str, Session]:
        with self._aws_lock:
            if key_id in self.users:
                secret, arn = self.users[key_id]
                return secret, Session(key_id, secret, "", float("inf"), arn)
            session = self.sessions.get(key_id)
        if session is None:
            raise _Error(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        if token != session.session_token:
            raise _Error(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        if time.time() >= session.expires:
            raise _Error(400, "ExpiredToken", "The security token included in the request is expired")
        return session.secret_access_key, session

    # -- the actions -----------------------------------------------------------------------------------------

    def _act(self, action: str, params: dict[str, str], caller: Session) -> str:
        if action == "GetCallerIdentity":
            user_id = caller.access_key_id
            return _xml(action, f"<Arn>{escape(caller.arn)}</Arn><UserId>{user_id}</UserId>"
                                f"<Account>{ACCOUNT}</Account>")
        if action == "AssumeRole":
            return self._assume_role(params, caller)
        if action == "GetSessionToken":
            if caller.session_token:
                raise _Error(403, "AccessDenied", "Cannot call GetSessionToken with session credentials")
            duration = self._duration(params, default=43200, maximum=129600)
            return _xml(action, self._new_session(caller.arn, duration))
        raise _Error(400, "InvalidAction", f"Could not find operation {action[:40]} for version 2011-06-15")

    def _assume_role(self, params: dict[str, str], caller: Session) -> str:
        arn = params.get("RoleArn", "")
        with self._aws_lock:
            maximum = self.roles.get(arn)
        if maximum is None:
            raise _Error(403, "AccessDenied", f"User: {caller.arn} is not authorized to perform: sts:AssumeRole "
                         f"on resource: {arn[:200]}")
        name = params.get("RoleSessionName", "")
        if not 2 <= len(name) <= 64:
            raise _Error(400, "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed "
                         "to satisfy constraint")
        chained = bool(caller.session_token) and ":assumed-role/" in caller.arn
        duration = self._duration(params, default=3600, maximum=CHAINED_MAX if chained else maximum)
        role_name = arn.rpartition("/")[2]
        issued = self._new_session(f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{name}", duration, chained=chained)
        user = (f"<AssumedRoleUser><AssumedRoleId>AROA{role_name.upper()[:12]}:{escape(name)}</AssumedRoleId>"
                f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{escape(role_name)}/{escape(name)}</Arn></AssumedRoleUser>")
        return _xml("AssumeRole", issued + user)

    def _assume_role_with_web_identity(self, params: dict[str, str]) -> str:
        token, arn, name = (params.get(key, "") for key in ("WebIdentityToken", "RoleArn", "RoleSessionName"))
        with self._aws_lock:
            trusted, maximum = self._web_identity, self.roles.get(arn)
        if not token:
            raise _Error(400, "ValidationError", "1 validation error detected: Value at 'webIdentityToken' failed to "
                         "satisfy constraint: Member must not be null")
        if trusted is None:
            raise _Error(400, "InvalidIdentityToken", "No OpenIDConnect provider found in your account for the "
                         "token's issuer")
        verify, audience = trusted
        try:
            claims = verify(token, audience)
        except Refused as refused:
            code = "ExpiredTokenException" if "expired" in refused.description else "InvalidIdentityToken"
            raise _Error(400, code, refused.description) from None
        if maximum is None:
            raise _Error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        if not 2 <= len(name) <= 64:
            raise _Error(400, "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed "
                         "to satisfy constraint")
        duration = self._duration(params, default=3600, maximum=maximum)
        role_name = arn.rpartition("/")[2]
        assumed = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{name}"
        issued = self._new_session(assumed, duration)
        with self._aws_lock:
            self.web_identity_tokens.append(token)
            self.calls.append(("AssumeRoleWithWebIdentity", str(claims.get("sub", ""))))
        user = (f"<SubjectFromWebIdentityToken>{escape(str(claims.get('sub', '')))}</SubjectFromWebIdentityToken>"
                f"<AssumedRoleUser><AssumedRoleId>AROA{role_name.upper()[:12]}:{escape(name)}</AssumedRoleId>"
                f"<Arn>{escape(assumed)}</Arn></AssumedRoleUser>")
        return _xml("AssumeRoleWithWebIdentity", issued + user)

    @staticmethod
    def _duration(params: dict[str, str], *, default: int, maximum: int) -> int:
        try:
            duration = int(params.get("DurationSeconds", default))
        except ValueError:
            raise _Error(400, "ValidationError", "DurationSeconds is not a number") from None
        if duration > maximum:
            raise _Error(400, "ValidationError", f"The requested DurationSeconds exceeds the MaxSessionDuration set "
                         f"for this role ({maximum}).")
        if duration < 900:
            raise _Error(400, "ValidationError", "DurationSeconds must be at least 900.")
        return duration

    def _new_session(self, arn: str, duration: int, *, chained: bool = False) -> str:
        key_id = "ASIA" + "".join(secrets.choice(_ALNUM) for _ in range(16))
        secret, token = secrets.token_urlsafe(30), "FwoG" + secrets.token_urlsafe(120)
        expires = int(time.time() + min(duration, self.lifetime))
        self._issue(token, expires)  # counted as a login, and its token known
        with self._aws_lock:
            self.sessions[key_id] = Session(key_id, secret, token, expires, arn, chained)
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"<Credentials><AccessKeyId>{key_id}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
                f"<SessionToken>{token}</SessionToken><Expiration>{stamp}</Expiration></Credentials>")


def _authorization(value: str) -> dict[str, str]:
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return {}
    return dict(part.strip().partition("=")[::2] for part in rest.split(","))


def _parse_stamp(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _xml(action: str, result: str) -> str:
    request_id = secrets.token_hex(16)
    return (f'<{action}Response xmlns="{_NS}"><{action}Result>{result}</{action}Result>'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>")


def _error_response(error: _Error, headers: Mapping[str, str] | None = None) -> Response:
    kind = "Receiver" if error.status >= 500 else "Sender"
    body = (f'<ErrorResponse xmlns="{_NS}"><Error><Type>{kind}</Type><Code>{error.code}</Code>'
            f"<Message>{escape(error.message)}</Message></Error><RequestId>{secrets.token_hex(16)}</RequestId>"
            "</ErrorResponse>")
    return Response(body, status_code=error.status, media_type="text/xml", headers=dict(headers or {}))
