"""GitHub Actions' OIDC token: the identity of the running workflow job, for a cloud or another token service to
exchange (a job with `permissions: id-token: write`).

GitHub gives the job two variables: ACTIONS_ID_TOKEN_REQUEST_URL (already carrying `?api-version=2.0`) and
ACTIONS_ID_TOKEN_REQUEST_TOKEN, a bearer token for that URL. `GET {url}&audience=AUD` with
`Authorization: Bearer {request token}` answers `{"value": JWT}`; the JWT's own `exp` (minutes away) is its
expiry. The request token is valid for the whole job, so tokend asks again whenever the JWT is due.
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlencode, urlsplit

import httpx
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from tokend.config.fields import UpstreamURL, shown_url
from tokend.config.secrets import Secret
from tokend.credential import Credential
from tokend.errors import UpstreamError
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import LoginRequest, bearer_credential, exchange, limits, malformed
from tokend.providers.expiry import jwt_expiry
from tokend.redact import Redactor

__all__ = ["GitHubActionsOIDC", "GitHubActionsOIDCConfig"]

URL_VARIABLE = "ACTIONS_ID_TOKEN_REQUEST_URL"
_GITHUB_DEFAULT = "https://pipelines.actions.githubusercontent.com"  # shown (and gated by host) outside a job
TOKEN_VARIABLE = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


def _describe(body: object) -> tuple[str | None, str | None]:
    message = body.get("message") if isinstance(body, dict) else None
    return None, message if isinstance(message, str) else None


class GitHubActionsOIDCConfig(ProviderBase):
    kind: Literal["github_actions_oidc"]
    audience: str | None = Field(default=None, min_length=1)  # the `aud` the exchanging service expects
    # Default: the job's variables, read at each login.
    request_url: str | None = Field(default=None, min_length=1)
    request_token: Secret | None = None
    default_lifetime: float = 300.0  # GitHub's tokens live minutes; the JWT's exp is used when it has one

    @model_validator(mode="after")
    def _usable_url(self) -> GitHubActionsOIDCConfig:
        if self.request_url is not None:  # it carries a query (api-version): checked as an upstream URL without it
            TypeAdapter(UpstreamURL).validate_python(urlsplit(self.request_url)._replace(query="").geturl())
        return self

    @property
    def url(self) -> str:
        return self.request_url or os.environ.get(URL_VARIABLE) or _GITHUB_DEFAULT

    def job_request(self, provider: str) -> tuple[str, str]:
        """(the request URL with `audience` as one more query parameter, the request token). Read from the job's
        variables at each login, not when the config is loaded: GitHub sets them only inside a job, and a
        config checked elsewhere is still a good one."""
        url = self.request_url or os.environ.get(URL_VARIABLE)
        token = self.request_token.get() if self.request_token is not None else os.environ.get(TOKEN_VARIABLE)
        if not url or not token:
            missing = URL_VARIABLE if not url else TOKEN_VARIABLE
            raise UpstreamError(provider, f"{missing} is not set: run tokend inside the GitHub Actions job (the "
                                "workflow needs `permissions: id-token: write`), or set request_url and "
                                "request_token", retryable=False)
        try:
            TypeAdapter(UpstreamURL).validate_python(urlsplit(url)._replace(query="").geturl())
        except ValidationError as exc:
            raise UpstreamError(provider, f"{URL_VARIABLE}: {exc.errors()[0]['msg']}", retryable=False) from None
        checked = url
        if self.audience is not None:
            checked += ("&" if urlsplit(url).query else "?") + urlencode({"audience": self.audience})
        return checked, token


class GitHubActionsOIDC:
    def __init__(self, name: str, config: GitHubActionsOIDCConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        config = self.config
        url, request_token = config.job_request(self.name)
        self._redactor.add_secrets([request_token])
        login = LoginRequest(
            provider=self.name, method="GET", url=url, action="the job's OIDC token request",
            headers={"Authorization": f"Bearer {request_token}", "Accept": "application/json"},
            **limits(config), redactor=self._redactor, describe=_describe,
        )
        try:
            body, request_id = await exchange(client, login)
        except UpstreamError as exc:
            if exc.status in (401, 403):
                exc.message += ("; check the workflow's `permissions: id-token: write` (a job from a fork's pull "
                                f"request gets no OIDC token) and that {shown_url(config.url)} is this job's")
                exc.args = (exc.message,)
            raise
        token = body.get("value") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise malformed(self.name, "no value", request_id)
        expires = jwt_expiry(token)
        if expires is None:
            raise malformed(self.name, "the value is not a JWT with an exp claim", request_id)
        return bearer_credential(config, token, expires, request_id=request_id)


EXAMPLE = """\
[providers.github-oidc]
kind = "github_actions_oidc"               # the job's identity (needs `permissions: id-token: write`)
audience = "sts.amazonaws.com"             # the aud the exchanging service expects
# request_url and request_token default to ACTIONS_ID_TOKEN_REQUEST_URL / _TOKEN
"""

KIND = Kind("github_actions_oidc", GitHubActionsOIDCConfig,
            "tokend.providers.github_actions_oidc:GitHubActionsOIDC", example=EXAMPLE)
