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
from pydantic import Field, model_validator

from tokend.credential import Credential
from tokend.errors import UpstreamError
from tokend.expiry import jwt_expiry
from tokend.fields import shown_url
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import LoginRequest, bearer_credential, exchange, limits, malformed
from tokend.redact import Redactor
from tokend.secrets import Secret

__all__ = ["GitHubActionsOIDC", "GitHubActionsOIDCConfig"]

URL_VARIABLE = "ACTIONS_ID_TOKEN_REQUEST_URL"
TOKEN_VARIABLE = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


def _describe(body: object) -> tuple[str | None, str | None]:
    message = body.get("message") if isinstance(body, dict) else None
    return None, message if isinstance(message, str) else None


class GitHubActionsOIDCConfig(ProviderBase):
    kind: Literal["github_actions_oidc"]
    audience: str | None = Field(default=None, min_length=1)  # the `aud` the exchanging service expects
    # Default: the job's variables, read when the config is loaded.
    request_url: str | None = Field(default=None, min_length=1)
    request_token: Secret | None = None
    default_lifetime: float = 300.0  # GitHub's tokens live minutes; the JWT's exp is used when it has one

    @model_validator(mode="before")
    @classmethod
    def _from_the_job(cls, data: object) -> object:
        # Here, not at login: a config used outside a workflow job is refused at start with a sentence.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("request_url") is None:
            if not os.environ.get(URL_VARIABLE):
                raise ValueError(f"{URL_VARIABLE} is not set: run inside a GitHub Actions job whose workflow has "
                                 "`permissions: id-token: write`, or set request_url and request_token")
            data["request_url"] = os.environ[URL_VARIABLE]
        if data.get("request_token") is None:
            if not os.environ.get(TOKEN_VARIABLE):
                raise ValueError(f"{TOKEN_VARIABLE} is not set (GitHub sets it beside {URL_VARIABLE} when the "
                                 "workflow has `permissions: id-token: write`)")
            data["request_token"] = {"env": TOKEN_VARIABLE}
        return data

    @model_validator(mode="after")
    def _usable_url(self) -> GitHubActionsOIDCConfig:
        from pydantic import TypeAdapter

        from tokend.fields import UpstreamURL

        assert self.request_url is not None
        # The URL carries a query (api-version): checked as an upstream URL without it.
        parts = urlsplit(self.request_url)
        TypeAdapter(UpstreamURL).validate_python(parts._replace(query="").geturl())
        return self

    @property
    def url(self) -> str:
        assert self.request_url is not None
        return self.request_url

    @property
    def token_url(self) -> str:
        """The request URL with `audience` added as one more query parameter."""
        assert self.request_url is not None
        if self.audience is None:
            return self.request_url
        separator = "&" if urlsplit(self.request_url).query else "?"
        return f"{self.request_url}{separator}{urlencode({'audience': self.audience})}"


class GitHubActionsOIDC:
    def __init__(self, name: str, config: GitHubActionsOIDCConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        config = self.config
        assert config.request_token is not None
        login = LoginRequest(
            provider=self.name, method="GET", url=config.token_url, action="the job's OIDC token request",
            headers={"Authorization": f"Bearer {config.request_token.get()}", "Accept": "application/json"},
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
[providers.github]
kind = "github_actions_oidc"               # the job's identity (needs `permissions: id-token: write`)
audience = "sts.amazonaws.com"             # the aud the exchanging service expects
# request_url and request_token default to ACTIONS_ID_TOKEN_REQUEST_URL / _TOKEN
"""

KIND = Kind("github_actions_oidc", GitHubActionsOIDCConfig, GitHubActionsOIDC, example=EXAMPLE)
