"""Provider kinds: one module (or folder) per kind, each ending in its `KIND`; the table below is the only
registry. A kind's module is imported when a config names the kind, or when every kind is asked for
(`tokend init`, `all_kinds`): a daemon holds the models and logins of its own kinds and no others."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import PlainValidator, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticKnownError

from tokend.providers.base import Kind, Provider, ProviderBase
from tokend.redact import Redactor

__all__ = ["EXTENSIONS", "PROVIDER_KINDS", "Kind", "Provider", "ProviderBase", "ProviderConfig", "all_kinds",
           "build_provider", "import_logins", "kind"]

# The `kind` value -> its Kind, as "module:attribute".
_REGISTRY: Mapping[str, str] = {
    "felloh": "tokend.providers.felloh:KIND",
    "fintech_studios": "tokend.providers.fintech_studios:KIND",
    "flotiq": "tokend.providers.flotiq:KIND",
    "oauth2_client_credentials": "tokend.providers.oauth2:KIND",
    "http": "tokend.providers.http:KIND",
    "static": "tokend.providers.static:KIND",
    "github_app": "tokend.providers.github_app:KIND",
    "google_service_account": "tokend.providers.google_service_account:KIND",
    "jwt_bearer": "tokend.providers.jwt_bearer:KIND",
    "oauth2_refresh_token": "tokend.providers.oauth2_refresh_token.grant:KIND",
    "aws_assume_role": "tokend.providers.aws:ASSUME_ROLE",
    "aws_session_token": "tokend.providers.aws:SESSION_TOKEN",
    "aws_ecr": "tokend.providers.aws:ECR",
    "oauth2_token_exchange": "tokend.providers.oauth2_token_exchange:KIND",
    "github_actions_oidc": "tokend.providers.github_actions_oidc:KIND",
    "google_workload_identity": "tokend.providers.google_workload_identity:KIND",
    "google_impersonation": "tokend.providers.google_impersonation:KIND",
}
PROVIDER_KINDS = tuple(_REGISTRY)

# What kinds add to the daemon, as "module:Class" (a class taking the daemon's DaemonParts): every daemon
# builds each of them, whatever its config names, since a reload may add a provider of the kind.
EXTENSIONS = (
    "tokend.providers.felloh.extension:FellohExtension",
    "tokend.providers.oauth2_refresh_token.device:DeviceLogins",
)


@functools.cache
def kind(name: str) -> Kind[Any]:
    """The kind called `name`, its module imported on first use. KeyError for a name that is no kind."""
    module, _, attribute = _REGISTRY[name].partition(":")
    found: Kind[Any] = getattr(importlib.import_module(module), attribute)
    return found


def all_kinds() -> tuple[Kind[Any], ...]:
    """Every kind, each module imported: for what lists them all (`tokend init`, the docs)."""
    return tuple(kind(name) for name in PROVIDER_KINDS)


def _validated(value: Any, info: ValidationInfo) -> ProviderBase:
    """A provider's table validated by its kind's model, the only model built. The errors keep the locations
    a union discriminated by `kind` gives them (the kind's name before the field's), and its error types."""
    if isinstance(value, ProviderBase):
        return value
    if not isinstance(value, Mapping):
        raise PydanticKnownError("model_attributes_type")
    if "kind" not in value:
        raise PydanticKnownError("union_tag_not_found", {"discriminator": "'kind'"})
    tag = str(value["kind"])
    if tag not in _REGISTRY:
        raise PydanticKnownError("union_tag_invalid", {
            "discriminator": "'kind'", "tag": tag, "expected_tags": ", ".join(f"'{name}'" for name in PROVIDER_KINDS),
        })
    try:
        validated: ProviderBase = kind(tag).config.model_validate(value, context=info.context)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(exc.title, [_below(tag, error) for error in exc.errors()]) from None
    return validated


def _below(tag: str, error: ErrorDetails) -> InitErrorDetails:
    """The error of a kind's model, as the union's: located under the kind's name."""
    moved = InitErrorDetails(type=error["type"], loc=(tag, *error["loc"]), input=error["input"])
    if "ctx" in error:
        moved["ctx"] = error["ctx"]
    return moved


if TYPE_CHECKING:
    ProviderConfig = ProviderBase
else:
    # Any, not ProviderBase: the validator makes the instance, and it is dumped as its own kind's model.
    ProviderConfig = Annotated[Any, PlainValidator(_validated)]


def build_provider(name: str, config: ProviderBase, redactor: Redactor) -> Provider:
    return kind(config.kind).login_class()(name, config, redactor)


def import_logins(configs: Iterable[ProviderBase]) -> None:
    """Import the login modules of these providers' kinds (and no others) now rather than at their first login."""
    for config in configs:
        kind(config.kind).login_class()
