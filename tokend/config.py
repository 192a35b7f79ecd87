"""The configuration file, validated when loaded: the server, the upstream client, the local clients, and
the providers, whose models each kind defines in its own module (tokend.providers).

Every secret in it is a reference (`{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`) or,
with a warning, a plain string (tokend.secrets). References are resolved while the config is validated, so
a missing variable or an unreadable file is refused at start, with the provider and the field named.
"""

from __future__ import annotations

import difflib
import grp
import os
import pwd
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from tokend.discovery import unreadable_config
from tokend.errors import ConfigError
from tokend.fields import Seconds, SocketMode, is_loopback_host
from tokend.fleet.config import FleetConfig, missing_extra
from tokend.outputs.metadata import MetadataConfig
from tokend.providers import KINDS, PROVIDER_KINDS, ProviderConfig
from tokend.secrets import Secret, config_directory
from tokend.state.config import StateConfig

__all__ = ["ClientConfig", "ServerConfig", "Settings", "UpstreamConfig"]


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    socket: Path | None = None
    # Who may connect to the unix socket: its owner only by default; 0o660 with socket_group for a group.
    socket_mode: SocketMode = 0o600
    socket_group: str | None = None
    allow_remote: bool = False
    allowed_hosts: tuple[str, ...] = ()
    # How long a GET waits for a login already in flight (the first one, or one for a stale token).
    wait_timeout: Seconds = 5.0

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> ServerConfig:
        if not self.allow_remote and not is_loopback_host(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address; tokend serves tokens to local programs only. "
                "Set allow_remote = true (with allowed_hosts) only for a pod or compose network namespace"
            )
        if self.allow_remote and not self.allowed_hosts:
            raise ValueError("allow_remote = true needs allowed_hosts, the Host names clients may use")
        return self


ProviderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class UpstreamConfig(BaseModel):
    """How tokend reaches the providers. TLS certificates are always verified: no setting turns that off.

    `ca_bundle` (PEM) adds CAs to the trust store and never replaces it: a corporate CA that re-signs
    intercepted TLS is trusted, and the public CAs stay trusted for the providers it leaves alone.
    Proxies come from the environment (HTTPS_PROXY, NO_PROXY, ...); see tokend.upstream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @staticmethod
    def _loadable(path: Path) -> Path:
        import ssl  # here rather than at the top: only a config with a ca_bundle needs it

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except FileNotFoundError:
            raise ValueError(f"CA bundle {path} does not exist") from None
        except ssl.SSLError:
            raise ValueError(
                f"CA bundle {path} holds no certificate that loads; it must be PEM: "
                "one or more -----BEGIN CERTIFICATE----- blocks"
            ) from None
        except OSError as exc:
            raise ValueError(f"CA bundle {path} cannot be read ({exc.strerror})") from None
        return path

    ca_bundle: Annotated[Path, AfterValidator(_loadable)] | None = None


MIN_CLIENT_KEY_LENGTH = 16  # ~96 bits as url-safe base64: not guessable over a local socket


class ClientConfig(BaseModel):
    """A local program allowed to read some providers' tokens (scoped like Flotiq's user-defined keys), known
    by its key, by the Unix user or group it runs as (on the unix socket), or by both. Once any client is
    defined, every token and status request must be matched to one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Secret | None = None
    # Who the peer of the unix socket is (SO_PEERCRED), by name or number; over TCP it cannot be known.
    unix_user: str | None = None
    unix_group: str | None = None
    # Whether the bare key is taken (`Authorization: Bearer`, for curl); false: only signed requests.
    allow_bearer: bool = True
    providers: tuple[ProviderName, ...] = Field(min_length=1)
    # May also use its providers' admin endpoints (Felloh key management) and POST /reload.
    admin: bool = False

    @model_validator(mode="after")
    def _known_somehow(self) -> ClientConfig:
        if self.key is None and self.unix_user is None and self.unix_group is None:
            raise ValueError("set key, unix_user or unix_group: how this client is told from the others")
        if self.key is not None and len(self.key.get()) < MIN_CLIENT_KEY_LENGTH:
            raise ValueError(f"key must be at least {MIN_CLIENT_KEY_LENGTH} characters: make one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        self.uid()
        self.group()
        return self

    def uid(self) -> int | None:
        """unix_user as a user id; ValueError naming it when this machine has no such user."""
        if self.unix_user is None:
            return None
        if self.unix_user.isdigit():
            return int(self.unix_user)
        try:
            return pwd.getpwnam(self.unix_user).pw_uid
        except KeyError:
            raise ValueError(f"unix_user {self.unix_user!r} is not a user on this machine") from None

    def group(self) -> tuple[int, frozenset[str]] | None:
        """unix_group as (group id, the names of its members); ValueError when there is no such group."""
        if self.unix_group is None:
            return None
        try:
            entry = grp.getgrgid(int(self.unix_group)) if self.unix_group.isdigit() else grp.getgrnam(self.unix_group)
        except KeyError:
            if self.unix_group.isdigit():
                return int(self.unix_group), frozenset()
            raise ValueError(f"unix_group {self.unix_group!r} is not a group on this machine") from None
        return entry.gr_gid, frozenset(entry.gr_mem)


class Settings(BaseSettings):
    """The whole configuration. Environment variables `TOKEND_SERVER__PORT=9000` override the file."""

    model_config = SettingsConfigDict(
        env_prefix="TOKEND_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    providers: dict[ProviderName, ProviderConfig] = {}
    clients: dict[ProviderName, ClientConfig] = {}
    fleet: FleetConfig | None = None  # share one login per provider with other daemons, through Redis
    state: StateConfig | None = None  # keep credentials across restarts, sealed in a folder
    metadata: MetadataConfig = MetadataConfig()  # cloud SDKs' metadata endpoints (tokend.outputs)

    @model_validator(mode="after")
    def _metadata_names_providers(self) -> Settings:
        if (problem := self.metadata.problem(self.providers)) is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _fleet_rotates_no_felloh_keys(self) -> Settings:
        if self.fleet is not None and (refused := self.fleet.refused_rotations(self.providers)):
            raise ValueError(refused)
        return self

    @model_validator(mode="after")
    def _fleet_extra_installed(self) -> Settings:
        # Here rather than when the daemon starts: `tokend check` says it too, and `tokend run` ends with
        # this sentence, not with a traceback from deep inside the start.
        if self.fleet is not None and (missing := missing_extra()):
            raise ValueError(missing)
        return self

    @model_validator(mode="after")
    def _clients_name_providers(self) -> Settings:
        seen: dict[str, str] = {}
        for name, client in self.clients.items():
            for provider in client.providers:
                if provider not in self.providers:
                    raise ValueError(f'client "{name}", field "providers": no provider is named "{provider}"')
            if client.key is not None and (other := seen.setdefault(client.key.get(), name)) != name:
                raise ValueError(f'client "{name}", field "key": the same key as client "{other}"; '
                                 "each client needs its own")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Read and validate the TOML file at `path`, or raise ConfigError saying what to fix."""
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (or not a regular file)")

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=path)

        # Every way the input can be wrong ends as a ConfigError naming what to fix: never a traceback.
        try:
            with config_directory(path.parent):
                return _FromFile()
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise unreadable_config(path, exc) from None
        except SettingsError as exc:
            raise ConfigError(_environment_problem(exc)) from None
        except ValidationError as exc:
            # `from None`: the ValidationError carries the input values, secrets included.
            problems = _describe_all(exc.errors(include_input=False, include_url=False))
            raise ConfigError(f"{path} has {len(problems)} problem(s)", problems) from None


def _environment_problem(exc: SettingsError) -> str:
    """pydantic-settings says which field an environment override could not be parsed for (as JSON)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else None
    if field is None:
        return "an environment variable TOKEND_... could not be read; check those set"
    return (f"environment variable TOKEND_{field.upper()} (or one below it, TOKEND_{field.upper()}__...) is "
            "not valid: a table given whole must be JSON")


def _describe_all(errors: list[Any]) -> list[str]:
    """One sentence per problem. The errors of one field for each type a union accepts (`scope = 5`: not a
    string, not a list) become one sentence naming the accepted types."""
    problems: list[str] = []
    unions: dict[tuple[str, ...], list[str]] = {}
    for error in errors:
        loc = tuple(str(part) for part in error["loc"])
        if loc and _TYPE_TAG.fullmatch(loc[-1]) and error["type"].endswith("_type"):
            if loc[:-1] not in unions:
                unions[loc[:-1]] = []
                problems.append("")  # its place, filled in below
            unions[loc[:-1]].append(loc[-1])
            continue
        problems.append(_describe({**error, "loc": loc}))
    for loc, tags in unions.items():
        accepted = " or ".join(dict.fromkeys(_TYPE_NAMES.get(tag, tag) for tag in tags))
        sentence = _describe({"loc": loc, "type": "union", "msg": f"must be {accepted}"})
        problems[problems.index("")] = sentence
    return problems


# A union member's name in an error's location: `str`, `list[str]`, `int`, `dict[str,str]`, ...
_TYPE_TAG = re.compile(r"(str|int|float|bool|none|list\[.*\]|dict\[.*\]|tuple\[.*\])")
_TYPE_NAMES = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
               "list[str]": "a list of strings", "dict[str,str]": "a table of strings"}


def _describe(error: Any) -> str:
    """One sentence for one validation error, naming the provider and the field (or the environment
    variable that overrides it). Never the value."""
    loc = [str(part) for part in error["loc"]]
    variable = "TOKEND_" + "__".join(loc).upper()
    if loc and variable in os.environ:
        return f"environment variable {variable}: {_message(error)}"
    if len(loc) >= 2 and loc[0] in ("providers", "clients"):
        rest = loc[2:]
        if rest and rest[0] in PROVIDER_KINDS:
            rest = rest[1:]
        where = f'{loc[0][:-1]} "{loc[1]}"' + (f', field "{".".join(rest)}"' if rest else "")
    elif not loc:
        return _message(error)  # a check across the whole file: its message names what it is about
    else:
        where = f'field "{".".join(loc)}"'
    return f"{where}: {_message(error)}"


def _known_settings(loc: tuple[str, ...] | list[str]) -> list[str]:
    """The setting names the table holding `loc`'s last part accepts, to suggest the near one to a typo."""
    parts = [str(part) for part in loc[:-1]]
    model: type[BaseModel] | None = Settings
    if parts[:1] == ["providers"] and len(parts) >= 3:
        model, parts = _KIND_MODELS.get(parts[2]), parts[3:]
    elif parts[:1] == ["clients"] and len(parts) >= 2:
        model, parts = ClientConfig, parts[2:]
    for part in parts:
        if model is None:
            break
        if part.isdigit():
            continue  # a position in a list of tables ([[providers.x.sinks]])
        field = model.model_fields.get(part)
        model = None if field is None else _model_in(field.annotation)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside a field's type (`FleetConfig | None`, `tuple[SinkConfig, ...]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        if (model := _model_in(argument)) is not None:
            return model
    return None


_KIND_MODELS: dict[str, type[BaseModel]] = {kind.name: kind.config for kind in KINDS}


def _message(error: Any) -> str:
    kinds = ", ".join(f'"{k}"' for k in PROVIDER_KINDS)
    match error["type"]:
        case "union_tag_invalid":
            tag = str(error["ctx"]["tag"])
            near = difflib.get_close_matches(tag.lower().replace("-", "_"), PROVIDER_KINDS, n=1)
            guess = f'did you mean "{near[0]}"? ' if near else ""
            return f'unknown kind "{tag}"; {guess}kind must be one of {kinds}'
        case "union_tag_not_found":
            return f"kind is missing; it must be one of {kinds}"
        case "missing":
            return "is required but missing"
        case "extra_forbidden":
            near = difflib.get_close_matches(str(error["loc"][-1]), _known_settings(error["loc"]), n=1)
            return f"is not a known setting; did you mean {near[0]}?" if near else "is not a known setting (a typo?)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
