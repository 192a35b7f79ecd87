"""The settings of the ways a token leaves tokend: file sinks (`[[providers.NAME.sinks]]`) and the cloud
metadata endpoints (`[metadata.gce]`, `[metadata.azure]`, `[metadata.aws]`). Models only: the config and the
providers' models import them, so nothing here may import a runtime module of the outputs.
"""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from tokend.config.fields import LoopbackListen, Seconds
from tokend.config.secrets import Secret
from tokend.outputs import templated

__all__ = ["AwsKeysConfig", "AwsMetadataConfig", "AzureConfig", "GceConfig", "GoogleAccountConfig", "MetadataConfig",
           "MetadataProtocol", "SinkConfig", "resource_key", "split_listen"]

MetadataProtocol = Literal["gce", "azure", "aws"]


class _Kinded(Protocol):
    """A provider's settings, as far as the metadata endpoints' checks look at them."""

    @property
    def kind(self) -> str: ...


@runtime_checkable
class GoogleAccountConfig(Protocol):
    """The settings of a Google kind that can stand behind the metadata server (one naming a service account)."""

    def gce_problem(self) -> str | None:
        """Why this provider cannot (a sentence to follow its name), or None."""
        ...


@runtime_checkable
class AwsKeysConfig(Protocol):
    """The settings of a kind whose credential is an AWS key pair (what [metadata.aws] serves): each signs
    its STS calls for a region."""

    @property
    def signing_region(self) -> str: ...


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
    escape: templated.Escape | None = None  # how a template writes values beyond RFC 6750's token68
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
        if self.escape is not None and self.template is None:
            raise ValueError('escape is how a template writes its values: it goes with format = "template"')
        return self

    def describe(self) -> str:
        """What `tokend check` says of the sink: its format, mode and, for a template, how values are written."""
        values = ""
        if self.template is not None:
            values = (", values RFC 6750 token68 only (set escape for others)" if self.escape is None
                      else f", values escaped for {self.escape}" if self.escape != "none" else ", values as they are")
        return f"{self.format}, mode {self.mode:04o}{values}"


class GceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: LoopbackListen
    provider: str = Field(min_length=1)  # a Google provider that names a service account
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


class AwsMetadataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: LoopbackListen
    provider: str | None = Field(default=None, min_length=1)  # GET /; default: the one AWS provider, if one
    authorization_token: Secret | None = None  # default: made anew by every run


class MetadataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gce: GceConfig | None = None
    azure: AzureConfig | None = None
    aws: AwsMetadataConfig | None = None

    def problem(self, providers: Mapping[str, _Kinded], api: tuple[str, int] | None = None) -> str | None:
        """Why these settings do not fit the providers, or the API's own address `api` (host, port; None on a
        unix socket): a sentence naming the field, or None."""
        if self.gce is not None:
            found = providers.get(self.gce.provider)
            if found is None:
                return f'field "metadata.gce.provider": no provider is named "{self.gce.provider}"'
            if not isinstance(found, GoogleAccountConfig):
                return (f'field "metadata.gce.provider": provider "{self.gce.provider}" is of kind {found.kind}; '
                        "Google's metadata server serves a Google service account (google_service_account, "
                        "google_impersonation, google_workload_identity with service_account)")
            if (problem := found.gce_problem()) is not None:
                return f'field "metadata.gce.provider": provider "{self.gce.provider}" {problem}'
        if self.azure is not None:
            for resource, name in self.azure.resources.items():
                if name not in providers:
                    return f'field "metadata.azure.resources": {resource} names no provider "{name}"'
        if self.aws is not None and self.aws.provider is not None:
            found = providers.get(self.aws.provider)
            if not isinstance(found, AwsKeysConfig):
                return (f'field "metadata.aws.provider": no AWS provider is named "{self.aws.provider}" '
                        "(one of kind aws_assume_role or aws_session_token)")
        ports = list(self.listening().values())
        if len(set(ports)) != len(ports):
            return "each [metadata.*] table needs a listen address of its own"
        for protocol, listen in self.listening().items():
            if api is not None and _same_address(split_listen(listen), api):
                return (f'field "metadata.{protocol}.listen": {listen} is the API\'s own address ([server] host and '
                        "port); give the metadata endpoint a port of its own")
        return None

    def listening(self) -> dict[MetadataProtocol, str]:
        """Each listener that is on, and its host:port."""
        found: dict[MetadataProtocol, str] = {}
        if self.gce is not None:
            found["gce"] = self.gce.listen
        if self.azure is not None:
            found["azure"] = self.azure.listen
        if self.aws is not None:
            found["aws"] = self.aws.listen
        return found


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:8771` -> ("127.0.0.1", 8771); `[::1]:8771` -> ("::1", 8771)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _same_address(one: tuple[str, int], other: tuple[str, int]) -> bool:
    """Whether two listeners would want one socket: the same port, on the same host or on names that may be
    the same address (`localhost` is 127.0.0.1 and ::1; a wildcard is every address)."""
    if one[1] != other[1]:
        return False
    try:
        first, second = ipaddress.ip_address(one[0]), ipaddress.ip_address(other[0])
    except ValueError:
        return True
    return first == second or first.is_unspecified or second.is_unspecified
