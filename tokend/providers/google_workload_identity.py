"""Google workload identity federation: a subject token from another platform (a Kubernetes service account
token, GitHub Actions' OIDC token, an Azure managed identity's token) exchanged for a Google access token,
with no service account key anywhere.

Step one is the Security Token Service's token exchange (the pool provider named by `audience` vouches for
the subject token); step two, when `service_account` is named, impersonates it with the federated token
(`generateAccessToken`). Both steps are one login: renewal repeats both, reading the subject token anew.

The settings are given one by one, or as `credentials_file`: the `external_account` JSON that
`gcloud iam workload-identity-pools create-cred-config` writes, read as google-auth reads it
(`audience`, `subject_token_type`, `token_url`, `service_account_impersonation_url`,
`service_account_impersonation.token_lifetime_seconds`, and `credential_source`: a `file`, or a `url` asked
with its `headers`, each in `format` text or json with `subject_token_field_name`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from tokend.config.fields import UpstreamURL
from tokend.config.secrets import config_relative
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase, Tokens
from tokend.providers.exchange import LoginRequest, limits, text_exchange
from tokend.providers.google_iam import (
    IAM_URL,
    STS_URL,
    Delegate,
    Lifetime,
    ServiceAccountEmail,
    describe_google,
    generate_access_token,
    generate_id_token,
    sts_exchange,
)
from tokend.providers.google_service_account import CLOUD_PLATFORM
from tokend.providers.oauth2_token_exchange import JWT_TOKEN_TYPE
from tokend.providers.subject_token import (
    SubjectToken,
    check_not_expired,
    read_subject_token,
    read_token_file,
    source_names,
    token_text,
)
from tokend.redact import Redactor

__all__ = ["CredentialSource", "GoogleWorkloadIdentity", "GoogleWorkloadIdentityConfig"]

_AUDIENCE = re.compile(r"//iam\.googleapis\.com/(projects/\d+/locations/global/workloadIdentityPools/[^/]+/providers/"
                       r"[^/]+|locations/global/workforcePools/[^/]+/providers/[^/]+)")
_IMPERSONATION = re.compile(r"(https?://[^/]+)/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")


class CredentialSource(BaseModel):
    """Where an external_account file says the subject token is: a file, or a URL to ask."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    file: Path | None = None
    url: str | None = None  # may carry a query (a metadata endpoint's api-version, an audience)
    headers: dict[str, str] = {}
    json_field: str | None = None  # format.type = "json": the field holding the token

    @field_validator("url")
    @classmethod
    def _upstream(cls, url: str | None) -> str | None:
        if url is not None:  # checked as any upstream URL, its query aside
            TypeAdapter(UpstreamURL).validate_python(urlsplit(url)._replace(query="").geturl())
        return url

    @property
    def shown(self) -> str:
        return f"credential_source.file {self.file}" if self.file is not None else f"credential_source.url {self.url}"


class GoogleWorkloadIdentityConfig(ProviderBase):
    kind: Literal["google_workload_identity"]
    audience: str
    subject_token: SubjectToken | None = None
    subject_token_type: str = Field(default=JWT_TOKEN_TYPE, min_length=1)
    scopes: tuple[str, ...] = Field(default=(CLOUD_PLATFORM,), min_length=1)
    service_account: ServiceAccountEmail | None = None  # impersonated with the federated token when named
    delegates: tuple[Delegate, ...] = ()
    lifetime: Lifetime = 3600
    sts_url: UpstreamURL = STS_URL
    iam_url: UpstreamURL = IAM_URL
    credentials_file: Path | None = None
    credential_source: CredentialSource | None = None  # read from credentials_file, never set by hand

    @model_validator(mode="before")
    @classmethod
    def _from_credentials_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("credentials_file") is None:
            if isinstance(data, dict) and data.get("credential_source") is not None:
                raise ValueError("credential_source is read from credentials_file; give subject_token instead")
            return data
        if data.get("subject_token") is not None:
            raise ValueError("give subject_token or credentials_file (which says where the token is), not both")
        path = config_relative(Path(str(data["credentials_file"])))
        return {**_external_account(path), **data, "credentials_file": path}

    @model_validator(mode="after")
    def _consistent(self) -> GoogleWorkloadIdentityConfig:
        if not _AUDIENCE.fullmatch(self.audience):
            raise ValueError(f"audience {self.audience[:120]!r} is not a workload identity pool provider: "
                             "//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/"
                             "providers/PROVIDER")
        if self.subject_token is None and self.credential_source is None:
            raise ValueError('subject_token is required (as { file = "/path" }, { provider = "NAME" } or a secret), '
                             "or credentials_file")
        if self.delegates and self.service_account is None:
            raise ValueError("delegates need service_account (the account impersonated through them)")
        return self

    @property
    def url(self) -> str:
        return self.sts_url

    @property
    def client_email(self) -> str:
        if self.service_account is None:
            raise ValueError("no service_account")
        return self.service_account

    def sources(self) -> tuple[str, ...]:
        return source_names(self.subject_token)

    def gce_problem(self) -> str | None:
        if self.service_account is None:
            return ("is a google_workload_identity provider without service_account: a federated token belongs to "
                    "no service account, so the metadata server has no email to serve and cannot mint ID tokens; "
                    "name the service_account it impersonates")
        return None

    def _default_registry_username(self) -> str:
        return "oauth2accesstoken"


def _external_account(path: Path) -> dict[str, Any]:
    """The settings an external_account credentials file gives, as google-auth reads them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"credentials_file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"credentials_file {path} cannot be read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"credentials_file {path} is not JSON") from None
    if not isinstance(data, dict) or data.get("type") != "external_account":
        raise ValueError(f'credentials_file {path} is not an "external_account" file (gcloud iam '
                         "workload-identity-pools create-cred-config writes one)")
    source = data.get("credential_source")
    if not isinstance(source, dict) or not ({"file", "url"} & set(source)):
        raise ValueError(f"credentials_file {path}: only a credential_source with file or url is supported (not "
                         "executable, nor AWS's environment_id)")
    found: dict[str, Any] = {"credential_source": _source(source, path)}
    for key, setting in (("audience", "audience"), ("subject_token_type", "subject_token_type"),
                         ("token_url", "sts_url")):
        if isinstance(data.get(key), str):
            found[setting] = data[key]
    if isinstance(url := data.get("service_account_impersonation_url"), str):
        match = _IMPERSONATION.fullmatch(url)
        if match is None:
            raise ValueError(f"credentials_file {path}: service_account_impersonation_url is not an IAM "
                             "generateAccessToken URL")
        found["iam_url"], found["service_account"] = match.group(1), match.group(2)
    impersonation = data.get("service_account_impersonation")
    if isinstance(impersonation, dict) and isinstance(impersonation.get("token_lifetime_seconds"), int):
        found["lifetime"] = impersonation["token_lifetime_seconds"]
    return found


def _source(source: dict[str, Any], path: Path) -> CredentialSource:
    shape: dict[str, Any] = source["format"] if isinstance(source.get("format"), dict) else {}
    json_field = None
    if shape.get("type", "text") == "json":
        json_field = shape.get("subject_token_field_name")
        if not isinstance(json_field, str) or not json_field:
            raise ValueError(f"credentials_file {path}: credential_source.format of type json needs "
                             "subject_token_field_name")
    headers: dict[str, Any] = source["headers"] if isinstance(source.get("headers"), dict) else {}
    return CredentialSource(file=config_relative(Path(source["file"])) if "file" in source else None,
                            url=source.get("url"), headers={str(k): str(v) for k, v in headers.items()},
                            json_field=json_field)


class GoogleWorkloadIdentity:
    def __init__(self, name: str, config: GoogleWorkloadIdentityConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    @property
    def client_email(self) -> str:
        return self.config.client_email

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.config.scopes

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        return await self.mint(client, tokens=tokens)

    async def mint(
        self, client: httpx.AsyncClient, *, scopes: Sequence[str] | None = None, audience: str | None = None,
        tokens: Tokens | None = None,
    ) -> Credential:
        """Both steps: the STS exchange, then (with a service account) an access token for `scopes` or an ID
        token for `audience`."""
        config = self.config
        email = config.service_account
        federated = await sts_exchange(
            client, config, provider=self.name, redactor=self._redactor, sts_url=config.sts_url,
            audience=config.audience, subject_token=await self._subject_token(client, tokens),
            subject_token_type=config.subject_token_type,
            scopes=[CLOUD_PLATFORM] if email is not None else scopes or config.scopes)
        if email is None:
            return federated
        self._redactor.set_tokens(f"{self.name} (federated token)", [federated.token])
        if audience is not None:
            return await generate_id_token(
                client, config, provider=self.name, redactor=self._redactor, iam_url=config.iam_url,
                bearer=federated.token, email=email, audience=audience, delegates=config.delegates)
        return await generate_access_token(
            client, config, provider=self.name, redactor=self._redactor, iam_url=config.iam_url,
            bearer=federated.token, email=email, scopes=scopes or config.scopes, delegates=config.delegates,
            lifetime=config.lifetime)

    async def _subject_token(self, client: httpx.AsyncClient, tokens: Tokens | None) -> str:
        config = self.config
        if config.subject_token is not None:
            return await read_subject_token(config.subject_token, provider=self.name, field="subject_token",
                                            tokens=tokens, redactor=self._redactor)
        source = config.credential_source
        assert source is not None  # the config's check: one of the two
        if source.file is not None:
            token = read_token_file(source.file, self.name, "credential_source", json_field=source.json_field)
        else:
            token = await self._asked(client, source)
        self._redactor.set_tokens(f"{self.name} (subject_token)", [token])
        check_not_expired(token, source.shown, self.name, "the subject token")
        return token

    async def _asked(self, client: httpx.AsyncClient, source: CredentialSource) -> str:
        """The subject token from credential_source.url (a local metadata endpoint, typically)."""
        assert source.url is not None
        login = LoginRequest(provider=self.name, method="GET", url=source.url, headers=source.headers,
                             action="the credential_source url", **limits(self.config), redactor=self._redactor,
                             describe=describe_google)
        content = await text_exchange(client, login)
        return token_text(content, source.shown, self.name, json_field=source.json_field)


EXAMPLE = """\
[providers.gcp-keyless]
kind = "google_workload_identity"          # another platform's token for a Google one: no key
audience = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/pool/providers/provider"
subject_token = { file = "/var/run/secrets/tokens/gcp-token" }   # read anew at every exchange
# subject_token = { provider = "github-oidc" }   # or another provider's token (github_actions_oidc)
service_account = "app@my-project.iam.gserviceaccount.com"   # impersonated; leave out for the federated token
# scopes = ["https://www.googleapis.com/auth/cloud-platform"]
# credentials_file = "/etc/tokend/gcp-wif.json"   # or all of it from gcloud's external_account file
"""

KIND = Kind("google_workload_identity", GoogleWorkloadIdentityConfig,
            "tokend.providers.google_workload_identity:GoogleWorkloadIdentity", example=EXAMPLE)
