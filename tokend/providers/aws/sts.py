"""The STS logins: `AssumeRole` and `GetSessionToken` in STS's Query protocol.

    POST / (https://sts.amazonaws.com, or sts.REGION.amazonaws.com, or sts_url)
    Content-Type: application/x-www-form-urlencoded; charset=utf-8
    Action=AssumeRole&Version=2011-06-15&RoleArn=...&RoleSessionName=...&DurationSeconds=3600

signed with Signature Version 4 (service `sts`, the region's, us-east-1 for the global endpoint). The answer
is XML: `<Credentials>` (AccessKeyId, SecretAccessKey, SessionToken, Expiration in ISO 8601) and, for a
role, `<AssumedRoleUser>` (whose ARN names the account); an error is `<ErrorResponse><Error>` with a
`Code` and a `Message`, which the login's error shows (never a key). XML from the network is read with no
document type declaration allowed, so no entity is ever expanded.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any
from urllib.parse import urlencode

import httpx

from tokend.credential import AwsKeys, Credential
from tokend.errors import CredentialsRejected, TokendError, UpstreamError
from tokend.providers.aws.config import AwsAssumeRoleConfig, AwsKeyPair, AwsSessionTokenConfig, session_name
from tokend.providers.aws.sigv4 import Keys, sign
from tokend.providers.base import Tokens
from tokend.providers.exchange import LoginRequest, fetch_answer, limits, login_credential, parse_retry_after
from tokend.providers.expiry import iso_expiry
from tokend.providers.subject_token import read_subject_token
from tokend.redact import SHORT_FIELD_LENGTH, Redactor, excerpt, untrusted

__all__ = ["AssumeRole", "SessionToken", "parse_xml", "source_keys"]

VERSION = "2011-06-15"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# STS error codes that pass by themselves (AWS's SDKs retry these with backoff)...
TRANSIENT_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
                             "InternalFailure", "InternalError", "IDPCommunicationError", "RequestTimeout"})
# ...and those that say the keys the request was signed with are not good.
REJECTED_CODES = frozenset({"SignatureDoesNotMatch", "InvalidClientTokenId", "AccessDenied", "AccessDeniedException",
                            "UnrecognizedClientException", "MissingAuthenticationToken", "IncompleteSignature",
                            "InvalidSignatureException"})
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException"})
# ...and those AssumeRoleWithWebIdentity answers about the token itself.
_WEB_IDENTITY_REFUSED = frozenset({"InvalidIdentityToken", "ExpiredTokenException", "IDPRejectedClaim"})


class _Refused(Exception):
    pass


def parse_xml(content: bytes) -> dict[str, Any] | None:
    """The leaves of an STS answer by element name (namespaces dropped), the Credentials, AssumedRoleUser and
    Error elements as dicts of their own; None when it is not XML, or declares a document type (an entity
    declared there could expand to gigabytes or read a local file: defusedxml's refusal, done here)."""
    from xml.parsers import expat  # only a daemon with an AWS provider reads XML

    found: dict[str, Any] = {}
    path: list[str] = []
    text: list[str] = []

    def start(name: str, attributes: Any) -> None:
        found.setdefault("", name.rpartition("}")[2])
        path.append(name.rpartition("}")[2])
        text.clear()

    def end(name: str) -> None:
        local, parent = path.pop(), path[-1] if path else ""
        if parent in _GROUPS:
            found.setdefault(parent, {})[local] = "".join(text).strip()
        elif local not in found and local not in _GROUPS:
            found[local] = "".join(text).strip()
        text.clear()

    def refuse(*_: Any) -> None:
        raise _Refused

    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    try:
        parser.Parse(content, True)
    except (_Refused, expat.ExpatError):
        return None
    return found


_GROUPS = frozenset({"Credentials", "AssumedRoleUser", "Error"})


class _StsLogin:
    """What both STS logins do: sign the call, send it, read the answer."""

    action: str

    def __init__(self, name: str, config: AwsKeyPair, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    def _parameters(self) -> dict[str, str]:
        raise NotImplementedError

    async def _call(self, client: httpx.AsyncClient, keys: Keys | None, **extra: str) -> Credential:
        """The STS call with this login's parameters (and `extra`), signed with `keys` (None: unsigned, as
        AssumeRoleWithWebIdentity is: its token is the proof)."""
        config = self.config
        body = urlencode({"Action": self.action, "Version": VERSION, **self._parameters(), **extra}).encode()
        headers = {"content-type": CONTENT_TYPE}
        if keys is not None:
            headers = sign("POST", config.url, headers, keys, region=config.signing_region, service="sts",
                           payload_hash=hashlib.sha256(body).hexdigest())
        request = LoginRequest(provider=self.name, method="POST", url=config.url, headers=headers, content=body,
                               redactor=self._redactor, describe=lambda _: (None, None), action=self.action,
                               **limits(config))
        response, content = await fetch_answer(client, request)
        answer = parse_xml(content)
        if answer is None or answer[""] == "html":
            shown = excerpt(content.decode("utf-8", errors="replace"), self._redactor)
            raise UpstreamError(self.name, f"{self.action} answered {response.status_code} but not with STS's XML: "
                                f"{shown!r} (is sts_url an STS endpoint?)", status=response.status_code,
                                retryable=response.status_code >= 500 or response.is_success)
        request_id = untrusted(answer.get("RequestId", ""), self._redactor, SHORT_FIELD_LENGTH) or None
        if not response.is_success or "Error" in answer:
            raise self._error(response, answer.get("Error") or {}, request_id)
        return self._credential(answer, request_id)

    def _said(self, response: httpx.Response, error: dict[str, str], request_id: str | None) -> tuple[str, str]:
        """STS's error code, and the sentence that shows it (its Message, scrubbed and bounded)."""
        code = untrusted(error.get("Code", ""), self._redactor, SHORT_FIELD_LENGTH) or "no error code"
        message = excerpt(error.get("Message", ""), self._redactor) or response.reason_phrase
        text = f"{self.action} answered {response.status_code}: {code}: {message}"
        return code, text + (f" (request id {request_id})" if request_id else "")

    def _error(self, response: httpx.Response, error: dict[str, str], request_id: str | None) -> UpstreamError:
        code, text = self._said(response, error, request_id)
        status = response.status_code
        if code in REJECTED_CODES:
            hint = {"SignatureDoesNotMatch": "is secret_access_key the secret of access_key_id? A clock far off "
                    "the true time fails the signature too",
                    "InvalidClientTokenId": "is access_key_id an active access key of this account?"}
            return CredentialsRejected(self.name, f"{text} ({hint.get(code, 'check the keys and the role policy')})",
                                       status=status, request_id=request_id)
        if code in EXPIRED_CODES:
            return self._expired(text, status, request_id)
        retryable = code in TRANSIENT_CODES or status >= 500 or status == 429
        return UpstreamError(self.name, text, status=status, request_id=request_id, retryable=retryable,
                             retry_after=parse_retry_after(response.headers.get("retry-after")))

    def _expired(self, text: str, status: int, request_id: str | None) -> UpstreamError:
        return CredentialsRejected(self.name, f"{text} (session_token has expired: give a fresh one, or the "
                                   "key pair of an IAM user)", status=status, request_id=request_id)

    def _credential(self, answer: dict[str, Any], request_id: str | None) -> Credential:
        values = answer.get("Credentials") or {}
        key_id, secret, token = (values.get(k) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
        if not key_id or not secret or not token:
            raise UpstreamError(self.name, f"{self.action} answer is malformed: no Credentials (AccessKeyId, "
                                "SecretAccessKey, SessionToken)", request_id=request_id)
        expires = iso_expiry(values.get("Expiration"))
        arn = (answer.get("AssumedRoleUser") or {}).get("Arn", "")
        account = arn.split(":")[4] if arn.count(":") >= 5 and arn.split(":")[4].isdigit() else None
        credential = login_credential(self.config, token, expires, headers={}, token_type="aws",
                                      request_id=request_id, exact_expiry=True)
        return dataclasses.replace(credential, aws=AwsKeys(key_id, secret, account))

    def _configured_keys(self) -> Keys:
        config = self.config
        assert config.access_key_id is not None and config.secret_access_key is not None
        token = config.session_token.get() if config.session_token is not None else None
        return Keys(config.access_key_id.get(), config.secret_access_key.get(), token)


class AssumeRole(_StsLogin):
    action = "AssumeRole"
    config: AwsAssumeRoleConfig

    def __init__(self, name: str, config: AwsAssumeRoleConfig, redactor: Redactor) -> None:
        super().__init__(name, config, redactor)
        if config.web_identity_token is not None:
            self.action = "AssumeRoleWithWebIdentity"

    def _parameters(self) -> dict[str, str]:
        config = self.config
        found = {"RoleArn": config.role_arn, "RoleSessionName": config.role_session_name or session_name(self.name),
                 "DurationSeconds": str(config.duration)}
        if config.external_id is not None:
            found["ExternalId"] = config.external_id
        if config.policy is not None:
            found["Policy"] = config.policy
        return found

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        source = self.config.source
        if self.config.web_identity_token is not None:  # read as it is now: the platform rotates it in place
            token = await read_subject_token(self.config.web_identity_token, provider=self.name,
                                             field="web_identity_token", tokens=tokens, redactor=self._redactor)
            return await self._call(client, None, WebIdentityToken=token)
        if source is None:
            return await self._call(client, self._configured_keys())
        return await self._call(client, await source_keys(self.name, source, tokens))

    def _error(self, response: httpx.Response, error: dict[str, str], request_id: str | None) -> UpstreamError:
        code, text = self._said(response, error, request_id)
        if self.config.web_identity_token is not None and code in _WEB_IDENTITY_REFUSED:
            # The token, not a key: retried with backoff, as the platform writes a new one; or STS's trust is off.
            hint = ("the web identity token had expired: check that the platform still rewrites it"
                    if code in EXPIRED_CODES else "check the account's OIDC identity provider (its issuer URL and "
                    "audience) and the role's trust policy for this token's issuer, audience and subject")
            return UpstreamError(self.name, f"{text} ({hint})", status=response.status_code, request_id=request_id)
        return super()._error(response, error, request_id)

    def _expired(self, text: str, status: int, request_id: str | None) -> UpstreamError:
        if self.config.source is not None:  # the source renews its own: retried with its next credential
            return UpstreamError(self.name, f"{text} (the credentials of source provider {self.config.source!r} "
                                 "expired before STS saw them)", status=status, request_id=request_id)
        return super()._expired(text, status, request_id)


class SessionToken(_StsLogin):
    action = "GetSessionToken"
    config: AwsSessionTokenConfig

    def _parameters(self) -> dict[str, str]:
        return {"DurationSeconds": str(self.config.duration)}

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self._call(client, self._configured_keys())


async def source_keys(name: str, source: str, tokens: Tokens | None) -> Keys:
    """The keys of provider `source`'s current AWS credential, which provider `name`'s login signs with."""
    if tokens is None:
        raise UpstreamError(name, f"this login signs with the credentials of provider {source!r}, which cannot "
                            "be read here", retryable=False)
    try:
        held = await tokens.get(source)
    except TokendError as exc:
        raise UpstreamError(name, f"source provider {source!r} has no credentials yet: {exc.message}") from None
    if held.aws is None:
        raise UpstreamError(name, f"source provider {source!r} holds no AWS credentials", retryable=False)
    return Keys(held.aws.access_key_id, held.aws.secret_access_key, held.token)

