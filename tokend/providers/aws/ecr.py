"""The ECR login: `GetAuthorizationToken` in AWS's JSON 1.1 protocol.

    POST / (https://api.ecr.REGION.amazonaws.com, or ecr_url)
    Content-Type: application/x-amz-json-1.1
    X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken
    {}

signed with Signature Version 4 (service `ecr`) with the current credentials of another AWS provider
(`source`). The answer's `authorizationData[0]` holds `authorizationToken` (base64 of `AWS:<password>`),
`expiresAt` (seconds since the epoch; 12 hours on) and `proxyEndpoint` (the registry's URL, whose host
Docker names the registry by). An error is `{"__type": "...#Code", "message": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers.aws.config import AwsEcrConfig
from tokend.providers.aws.sigv4 import Keys, sign
from tokend.providers.aws.sts import EXPIRED_CODES, REJECTED_CODES, TRANSIENT_CODES, source_keys
from tokend.providers.base import Tokens
from tokend.providers.exchange import (
    LoginRequest,
    fetch_answer,
    limits,
    login_credential,
    malformed,
    number_or_none,
    parse_retry_after,
)
from tokend.redact import SHORT_FIELD_LENGTH, Redactor, excerpt, untrusted

__all__ = ["TARGET", "AuthorizationToken"]

TARGET = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
CONTENT_TYPE = "application/x-amz-json-1.1"
_ACTION = "GetAuthorizationToken"


class AuthorizationToken:
    """ECR's registry password, asked with the source provider's AWS credentials at every login."""

    def __init__(self, name: str, config: AwsEcrConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        keys = await source_keys(self.name, self.config.source, tokens)
        response, content = await fetch_answer(client, self._request(keys))
        request_id = untrusted(response.headers.get("x-amzn-requestid", ""), self._redactor,
                               SHORT_FIELD_LENGTH) or None
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            shown = excerpt(content.decode("utf-8", errors="replace"), self._redactor)
            raise UpstreamError(self.name, f"{_ACTION} answered {response.status_code} but not with JSON: "
                                f"{shown!r} (is ecr_url ECR's API endpoint?)", status=response.status_code,
                                retryable=response.status_code >= 500 or response.is_success)
        if not response.is_success:
            raise self._error(response, answer, request_id)
        return self._credential(answer, request_id)

    def _request(self, keys: Keys) -> LoginRequest:
        config, body = self.config, b"{}"
        headers = sign("POST", config.url, {"content-type": CONTENT_TYPE, "x-amz-target": TARGET}, keys,
                       region=config.region, service="ecr", payload_hash=hashlib.sha256(body).hexdigest())
        return LoginRequest(provider=self.name, method="POST", url=config.url, headers=headers, content=body,
                            redactor=self._redactor, describe=lambda _: (None, None), action=_ACTION,
                            **limits(config))

    def _error(self, response: httpx.Response, answer: dict[str, Any], request_id: str | None) -> UpstreamError:
        # "__type" is the code, sometimes behind a namespace ("com.amazonaws.ecr#AccessDeniedException").
        code = str(answer.get("__type", "")).rpartition("#")[2]
        code = untrusted(code, self._redactor, SHORT_FIELD_LENGTH) or "no error code"
        message = excerpt(str(answer.get("message") or answer.get("Message") or ""), self._redactor)
        text = f"{_ACTION} answered {response.status_code}: {code}: {message or response.reason_phrase}"
        text += f" (request id {request_id})" if request_id else ""
        status, source = response.status_code, self.config.source
        if code in EXPIRED_CODES:  # the source renews its own: retried with its next credential
            return UpstreamError(self.name, f"{text} (the credentials of source provider {source!r} expired before "
                                 "ECR saw them)", status=status, request_id=request_id)
        if code in REJECTED_CODES:
            return CredentialsRejected(self.name, f"{text} (may the credentials of source provider {source!r} call "
                                       "ecr:GetAuthorizationToken?)", status=status, request_id=request_id)
        retryable = code in TRANSIENT_CODES or status >= 500 or status == 429
        return UpstreamError(self.name, text, status=status, request_id=request_id, retryable=retryable,
                             retry_after=parse_retry_after(response.headers.get("retry-after")))

    def _credential(self, answer: dict[str, Any], request_id: str | None) -> Credential:
        data = answer.get("authorizationData")
        found = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        encoded = found.get("authorizationToken")
        try:
            user, _, password = base64.b64decode(str(encoded), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        if not isinstance(encoded, str) or user != "AWS" or not password:
            raise malformed(self.name, "authorizationData[0].authorizationToken is not base64 of AWS:<password>",
                            request_id)
        endpoint = found.get("proxyEndpoint")
        registry = urlsplit(endpoint).netloc.lower() if isinstance(endpoint, str) else ""
        credential = login_credential(self.config, password, number_or_none(found.get("expiresAt")),
                                      headers={"Authorization": f"Basic {encoded}"}, token_type="Basic",
                                      request_id=request_id, exact_expiry=True)
        return dataclasses.replace(credential, registry=registry or None)
