"""Provider kinds: one module (or folder) per kind, each ending in its `KIND`; the one list below is
the only registry. The config's union of provider models, the list of kind names and the map from a
config to its login class are all built from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from tokend.providers import (
    aws,
    felloh,
    fintech_studios,
    flotiq,
    github_actions_oidc,
    github_app,
    google_impersonation,
    google_service_account,
    google_workload_identity,
    http,
    jwt_bearer,
    oauth2,
    oauth2_refresh_token,
    oauth2_token_exchange,
    static,
)
from tokend.providers.base import Kind, Provider, ProviderBase
from tokend.redact import Redactor

__all__ = ["KINDS", "PROVIDER_KINDS", "Kind", "Provider", "ProviderBase", "ProviderConfig", "build_provider",
           "import_logins"]

KINDS: tuple[Kind[Any], ...] = (
    felloh.KIND, fintech_studios.KIND, flotiq.KIND, oauth2.KIND, http.KIND, static.KIND,
    github_app.KIND, google_service_account.KIND, jwt_bearer.KIND, oauth2_refresh_token.KIND,
    aws.ASSUME_ROLE, aws.SESSION_TOKEN, aws.ECR,
    oauth2_token_exchange.KIND, github_actions_oidc.KIND, google_workload_identity.KIND, google_impersonation.KIND,
)
PROVIDER_KINDS = tuple(kind.name for kind in KINDS)
_BY_NAME = {kind.name: kind for kind in KINDS}

if TYPE_CHECKING:
    ProviderConfig = ProviderBase
else:
    ProviderConfig = Annotated[Union[tuple(kind.config for kind in KINDS)], Field(discriminator="kind")]  # noqa: UP007


def build_provider(name: str, config: ProviderBase, redactor: Redactor) -> Provider:
    return _BY_NAME[config.kind].login_class()(name, config, redactor)


def import_logins(configs: Iterable[ProviderBase]) -> None:
    """Import the login modules of these providers' kinds (and no others) now rather than at their first login."""
    for config in configs:
        _BY_NAME[config.kind].login_class()
