"""The settings of the ways a token leaves tokend: file sinks (`[[providers.NAME.sinks]]`) and the cloud
metadata endpoints (`[metadata.gce]`, `[metadata.azure]`). Models only: the config and the providers' models
import them, so nothing here may import a runtime module of the outputs.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from tokend.config.fields import LoopbackListen, Seconds
from tokend.outputs import templated

__all__ = ["ACCOUNT_KIND", "AzureConfig", "GceConfig", "MetadataConfig", "MetadataProtocol", "SinkConfig",
           "resource_key"]

# The kind [metadata.gce] serves: Google's metadata server hands out a service account's tokens.
ACCOUNT_KIND = "google_service_account"
MetadataProtocol = Literal["gce", "azure"]


class _Kinded(Protocol):
    """A provider's settings, as far as the metadata endpoints' checks look at them."""

    @property
    def kind(self) -> str: ...


def _file_mode(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError('must be a file mode such as 0o600 (or "0600")')
    if value & 0o600 != 0o600:
        raise ValueError(f"{value:#o} must let tokend's own user read and write the file (0o600 at least)")
    return value


def _signal_number(value: Any) -> int:
    name = str(value).upper().removeprefix("SIG")
    number = getattr(signal, f"SIG{name}", None)
    if not isinstance(number, int) or name in ("KILL", "STOP"):
        raise ValueError(f'{value!r} is not a signal to send on change (use a name such as "HUP" or "USR1")')
    return int(number)


class SinkConfig(BaseModel):
    """One file a provider's credential is written to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    format: Literal["raw", "json", "header", "env", "template"] = "raw"
    template: Annotated[str, AfterValidator(templated.check)] | None = None  # format = "template" only
    mode: Annotated[int, PlainValidator(_file_mode)] = 0o600
    owner: str | None = None
    group: str | None = None
    atomic: bool = True
    remove_on_exit: bool = False
    env_prefix: str = Field(default="TOKEND_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    command: tuple[str, ...] | None = Field(default=None, min_length=1)  # run without a shell after a change
    command_timeout: Seconds = 30.0
    signal: Annotated[int, PlainValidator(_signal_number)] | None = None
    pid_file: Path | None = None

    @model_validator(mode="after")
    def _one_way_to_tell(self) -> SinkConfig:
        if not self.path.is_absolute():
            raise ValueError("path must be absolute")
        if self.command is not None and self.signal is not None:
            raise ValueError("set command or signal (with pid_file), not both")
        if (self.signal is None) != (self.pid_file is None):
            raise ValueError("signal and pid_file go together: the signal is sent to the process in pid_file")
        if (self.format == "template") != (self.template is not None):
            raise ValueError('format = "template" and template go together: the template is what the file holds')
        return self


class GceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: LoopbackListen
    provider: str = Field(min_length=1)  # a google_service_account provider
    project_id: str | None = Field(default=None, min_length=1)


def resource_key(resource: str) -> str:
    """A resource in one form: `https://vault.azure.net/`, `https://vault.azure.net/.default` (a scope) and
    `HTTPS://Vault.Azure.Net` are one resource."""
    return resource.strip().removesuffix("/.default").rstrip("/").lower()


class AzureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: LoopbackListen
    resources: dict[str, str] = Field(min_length=1)  # resource URI -> the provider that serves it

    @field_validator("resources")
    @classmethod
    def _one_form(cls, resources: dict[str, str]) -> dict[str, str]:
        keyed: dict[str, str] = {}
        for resource, provider in resources.items():
            if keyed.setdefault(resource_key(resource), provider) != provider:
                raise ValueError(f"resource {resource!r} is listed twice, for two providers")
        return keyed


class MetadataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gce: GceConfig | None = None
    azure: AzureConfig | None = None

    def problem(self, providers: Mapping[str, _Kinded]) -> str | None:
        """Why these settings do not fit the providers (a sentence naming the field), or None."""
        if self.gce is not None:
            found = providers.get(self.gce.provider)
            if found is None:
                return f'field "metadata.gce.provider": no provider is named "{self.gce.provider}"'
            if found.kind != ACCOUNT_KIND:
                return (f'field "metadata.gce.provider": provider "{self.gce.provider}" is of kind {found.kind}; '
                        f"Google's metadata server serves a {ACCOUNT_KIND}")
        if self.azure is not None:
            for resource, name in self.azure.resources.items():
                if name not in providers:
                    return f'field "metadata.azure.resources": {resource} names no provider "{name}"'
        ports = list(self.listening().values())
        if len(set(ports)) != len(ports):
            return "[metadata.gce] and [metadata.azure] need a listen address each"
        return None

    def listening(self) -> dict[MetadataProtocol, str]:
        """Each listener that is on, and its host:port."""
        found: dict[MetadataProtocol, str] = {}
        if self.gce is not None:
            found["gce"] = self.gce.listen
        if self.azure is not None:
            found["azure"] = self.azure.listen
        return found
