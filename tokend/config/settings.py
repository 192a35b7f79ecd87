"""The configuration file, validated when loaded: the server, the upstream client, the local clients, and
the providers, whose models each kind defines in its own module (tokend.providers).

Every secret in it is a reference (`{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`) or,
with a warning, a plain string (tokend.config.secrets). References are resolved while the config is validated, so
a missing variable or an unreadable file is refused at start, with the provider and the field named.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from tokend.config.discovery import unreadable_config
from tokend.config.secrets import config_directory
from tokend.config.tables import ClientConfig, ProviderName, ServerConfig, UpstreamConfig
from tokend.errors import ConfigError
from tokend.fleet.config import FleetConfig, missing_extra
from tokend.outputs.config import MetadataConfig
from tokend.providers import PROVIDER_KINDS, ProviderConfig, kind
from tokend.state.config import StateConfig

__all__ = ["Settings"]


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
        api = None if self.server.socket else (self.server.host, self.server.port)
        if (problem := self.metadata.problem(self.providers, api)) is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _sources_known_and_acyclic(self) -> Settings:
        # Refused here, not found at login: a chain that loops back would wait on itself until a timeout.
        for name, config in self.providers.items():
            for source in config.sources():
                if source == name:
                    raise ValueError(f'provider "{name}" reads its own credentials: name another provider')
                if source not in self.providers:
                    raise ValueError(f'provider "{name}" reads the credentials of provider "{source}": no provider '
                                     "is named so")
        for name in self.providers:
            if (loop := _source_loop(self.providers, name, ())) is not None:
                raise ValueError(f"providers read each other's credentials in a loop ({' -> '.join(loop)}): "
                                 "one of them must start from a credential of its own")
        for name, config in self.providers.items():  # each kind's own demands of its sources (an AWS role's)
            for source in config.sources():
                if (problem := config.source_problem(source, self.providers[source])) is not None:
                    raise ValueError(f'provider "{name}", {problem}')
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


def _source_loop(providers: dict[str, Any], name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The chain of sources from `name` back to a provider already on `path`, or None."""
    if name in path:
        return (*path[path.index(name):], name)
    for source in providers[name].sources():
        if (loop := _source_loop(providers, source, (*path, name))) is not None:
            return loop
    return None


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
        model, parts = kind(parts[2]).config if parts[2] in PROVIDER_KINDS else None, parts[3:]
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
