"""Google service account impersonation: another provider's Google token (a service account key, workload
identity, a user's refresh token) asks the IAM Service Account Credentials API for a token of the target
service account: an access token (`generateAccessToken`), or with `target_audience` an ID token
(`generateIdToken`). No key of the target account exists anywhere; the caller needs
roles/iam.serviceAccountTokenCreator on it (tokend.providers.google_iam has the calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import httpx
from pydantic import Field

from tokend.config.fields import UpstreamURL
from tokend.credential import Credential
from tokend.providers.base import Kind, ProviderBase, Tokens
from tokend.providers.google_iam import (
    IAM_URL,
    Delegate,
    Lifetime,
    ServiceAccountEmail,
    generate_access_token,
    generate_id_token,
)
from tokend.providers.google_service_account import CLOUD_PLATFORM
from tokend.providers.subject_token import SubjectProvider, read_subject_token
from tokend.redact import Redactor

__all__ = ["GoogleImpersonation", "GoogleImpersonationConfig"]


class GoogleImpersonationConfig(ProviderBase):
    kind: Literal["google_impersonation"]
    source: str = Field(min_length=1)  # the provider whose Google token asks
    service_account: ServiceAccountEmail
    delegates: tuple[Delegate, ...] = ()
    scopes: tuple[str, ...] = Field(default=(CLOUD_PLATFORM,), min_length=1)
    lifetime: Lifetime = 3600
    target_audience: str | None = Field(default=None, min_length=1)  # serve an ID token for it instead
    iam_url: UpstreamURL = IAM_URL

    @property
    def url(self) -> str:
        return self.iam_url

    @property
    def client_email(self) -> str:
        return self.service_account

    def sources(self) -> tuple[str, ...]:
        return (self.source,)

    def gce_problem(self) -> str | None:
        return None

    def _default_registry_username(self) -> str:
        return "oauth2accesstoken"


class GoogleImpersonation:
    def __init__(self, name: str, config: GoogleImpersonationConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    @property
    def client_email(self) -> str:
        return self.config.service_account

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.config.scopes

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        return await self.fetch_chained(client, None)

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential:
        return await self.mint(client, audience=self.config.target_audience, tokens=tokens)

    async def mint(
        self, client: httpx.AsyncClient, *, scopes: Sequence[str] | None = None, audience: str | None = None,
        tokens: Tokens | None = None,
    ) -> Credential:
        """An ID token for `audience`, else an access token for `scopes` (default: the configured ones)."""
        config = self.config
        bearer = await read_subject_token(SubjectProvider(config.source), provider=self.name, field="source",
                                          tokens=tokens, redactor=None)
        if audience is not None:
            return await generate_id_token(
                client, config, provider=self.name, redactor=self._redactor, iam_url=config.iam_url, bearer=bearer,
                email=config.service_account, audience=audience, delegates=config.delegates)
        return await generate_access_token(
            client, config, provider=self.name, redactor=self._redactor, iam_url=config.iam_url, bearer=bearer,
            email=config.service_account, scopes=scopes or config.scopes, delegates=config.delegates,
            lifetime=config.lifetime)


EXAMPLE = """\
[providers.deployer-source]                # the caller: here a Kubernetes pod's identity, federated
kind = "google_workload_identity"
audience = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/pool/providers/k8s"
subject_token = { file = "/var/run/secrets/tokens/gcp-token" }

[providers.deployer]
kind = "google_impersonation"              # act as a service account, with no key of its own
source = "deployer-source"                 # any Google provider: a key, workload identity, a user's token
service_account = "deployer@my-project.iam.gserviceaccount.com"
# delegates = ["projects/-/serviceAccounts/middle@my-project.iam.gserviceaccount.com"]
# scopes = ["https://www.googleapis.com/auth/cloud-platform"]
# lifetime = 3600                          # seconds; more than 3600 needs the organisation's consent
# target_audience = "https://service.example.com"   # serve an ID token for it instead
"""

KIND = Kind("google_impersonation", GoogleImpersonationConfig,
            "tokend.providers.google_impersonation:GoogleImpersonation", example=EXAMPLE)
