"""The configuration: the TOML file of SPEC.md, validated when loaded.

Every secret in it is a reference (`{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`) or,
with a warning, a plain string. References are resolved while the config is validated, so a missing
variable or an unreadable file is refused at start, with the provider and the field named.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tokend import template
from tokend.errors import ConfigError
from tokend.pointer import check_pointer

__all__ = [
    "ClientConfig",
    "FellohConfig",
    "FintechStudiosConfig",
    "FlotiqConfig",
    "HttpConfig",
    "OAuth2ClientCredentialsConfig",
    "ProviderBase",
    "ProviderConfig",
    "SecretValue",
    "ServerConfig",
    "Settings",
    "StaticConfig",
    "UpstreamConfig",
    "is_loopback_host",
    "reread_secret_files",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

FELLOH_URLS = {"production": "https://api.felloh.com", "sandbox": "https://sandbox.felloh.com"}
FLOTIQ_URL = "https://api.flotiq.com"


# --- secrets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretValue:
    """A resolved secret and where it came from (`source` is safe to show: it never holds the value)."""

    value: SecretStr
    source: str
    path: Path | None = None

    @property
    def plain(self) -> bool:
        return self.source == "plain string"

    def get(self) -> str:
        return self.value.get_secret_value()


def _read_secret_file(path: Path, what: str) -> SecretValue:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValueError(f"{what} {path} is empty")
    return SecretValue(SecretStr(value), f"file {path}", path)


def _secret_from_env(name: str) -> SecretValue:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    if not value:
        raise ValueError(f"environment variable {name} is empty")
    return SecretValue(SecretStr(value), f"env {name}")


def _secret_from_credential(name: str) -> SecretValue:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(
            f"credential {name!r} needs $CREDENTIALS_DIRECTORY, which systemd sets for LoadCredential=; "
            "it is not set"
        )
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"credential name {name!r} must be a plain file name")
    return _read_secret_file(Path(directory) / name, "credential file")


_SECRET_SOURCES = {"env": _secret_from_env, "credential": _secret_from_credential}


def _resolve_secret(raw: Any) -> SecretValue:
    if isinstance(raw, SecretValue):
        return raw
    if isinstance(raw, str):
        if not raw:
            raise ValueError("is empty")
        return SecretValue(SecretStr(raw), "plain string")
    if isinstance(raw, dict) and len(raw) == 1:
        (how, where), = raw.items()
        if how == "file" and isinstance(where, str) and where:
            return _read_secret_file(Path(where), "secret file")
        if how in _SECRET_SOURCES and isinstance(where, str) and where:
            return _SECRET_SOURCES[how](where)
    raise ValueError('must be { env = "NAME" }, { file = "/path" }, { credential = "name" } or a string')


Secret = Annotated[SecretValue, PlainValidator(_resolve_secret)]


def reread_secret_files(config: ModelT) -> ModelT:
    """`config` with every `{ file }` and `{ credential }` secret read again from disk.

    For a key changed on disk while tokend runs. Raises ValueError (naming the file, never its content)
    when a file can no longer be used, for example while it is being rewritten.
    """
    return _reread(config)  # type: ignore[no-any-return]


def _reread(value: Any) -> Any:
    if isinstance(value, SecretValue):
        return value if value.path is None else _read_secret_file(value.path, "secret file")
    if isinstance(value, BaseModel):
        return value.model_copy(update={name: _reread(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, dict):
        return {key: _reread(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_reread(item) for item in value)
    return value


# --- addresses ----------------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts allowed without TLS or allow_remote."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _upstream_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not hold a user name or password; use the provider's secret fields")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r} must use https:// (plain http:// is allowed only for loopback hosts)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query or fragment")
    return url.rstrip("/")


UpstreamURL = Annotated[str, PlainValidator(lambda v: _upstream_url(_expect_str(v)))]


def _expect_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


# --- models ---------------------------------------------------------------------------------------------

Seconds = Annotated[float, Field(gt=0)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> float:
    """Seconds, given as a number or as "45s", "15m", "12h", "30d"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError('must be a positive duration: seconds, or a string such as "12h" or "30d"')
    return float(match.group(1)) * _UNIT[match.group(2)]


Duration = Annotated[float, PlainValidator(_duration)]


def _socket_mode(value: Any) -> int:
    """A unix socket's file mode: 0o660 in TOML, or "0660" / "660" as a string of octal digits."""
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value):
        value = int(value.removeprefix("0").removeprefix("o"), 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError('must be a file mode such as 0o600 (or "0600")')
    if value & 0o600 != 0o600:
        raise ValueError(f"{value:#o} must let tokend's own user read and write the socket (0o600 at least)")
    return value


SocketMode = Annotated[int, PlainValidator(_socket_mode)]


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


class ProviderBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Seconds = 10.0  # a whole login, every step included
    connect_timeout: Seconds = 5.0  # to open the connection (a black-holed address fails this fast)
    read_timeout: Seconds | None = None  # between two reads of the answer; default: timeout
    min_refresh_interval: Seconds = 10.0
    max_retry_delay: Seconds = 300.0  # the backoff after failed logins grows up to this
    default_lifetime: Seconds = 3600.0
    max_lifetime: Seconds = 86400.0
    fleet: bool = True  # with [fleet]: share this provider's token with the fleet (false: log in alone)

    def secrets(self) -> dict[str, SecretValue]:
        """Every secret in this provider's settings, by where it sits (`password`, `secrets.api_key`)."""
        found: dict[str, SecretValue] = {}
        for name, field in type(self).model_fields.items():
            _collect_secrets(field.alias or name, getattr(self, name), found)
        return found


def _collect_secrets(where: str, value: Any, found: dict[str, SecretValue]) -> None:
    if isinstance(value, SecretValue):
        found[where] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect_secrets(f"{where}.{key}", item, found)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _collect_secrets(f"{where}[{index}]", item, found)


class FellohConfig(ProviderBase):
    kind: Literal["felloh"]
    environment: Literal["production", "sandbox"] | None = None
    base_url: UpstreamURL | None = None
    public_key: Secret
    private_key: Secret
    organisation: str | None = None  # the organisation ID whose keys `tokend felloh` manages by default
    rotate_every: Duration | None = None  # rotate the key pair when the key files are this old

    @model_validator(mode="after")
    def _environment_or_url(self) -> FellohConfig:
        # No silent default: a sandbox key sent to production (or the reverse) fails in confusing ways.
        if self.environment is None and self.base_url is None:
            raise ValueError('set environment = "production" or "sandbox" (or base_url)')
        if self.rotate_every is not None:
            if self.organisation is None:
                raise ValueError("rotate_every needs organisation, the organisation ID the keys belong to")
            if self.public_key.path is None or self.private_key.path is None:
                raise ValueError("rotate_every needs public_key and private_key as { file = ... } references, "
                                 "so that tokend can write the new pair")
        return self

    @property
    def url(self) -> str:
        return self.base_url or FELLOH_URLS[self.environment or "production"]


class FintechStudiosConfig(ProviderBase):
    kind: Literal["fintech_studios"]
    base_url: UpstreamURL
    api_key: Secret
    email: str = Field(min_length=3)
    password: Secret

    @property
    def url(self) -> str:
        return self.base_url


class FlotiqConfig(ProviderBase):
    kind: Literal["flotiq"]
    base_url: UpstreamURL = FLOTIQ_URL
    api_key: Secret
    token_type: Literal["api_key"] = "api_key"

    @property
    def url(self) -> str:
        return self.base_url


class OAuth2ClientCredentialsConfig(ProviderBase):
    """RFC 6749 section 4.4: a client id and secret exchanged for an access token."""

    kind: Literal["oauth2_client_credentials"]
    token_url: UpstreamURL
    client_id: str = Field(min_length=1)
    client_secret: Secret
    scope: str | list[str] | None = None
    audience: str | None = None
    # client_secret_basic is the RFC's default (section 2.3.1); some servers only take the form fields.
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    extra: dict[str, str] = {}  # further form fields some servers want (resource, ...)

    @property
    def url(self) -> str:
        return self.token_url


JsonPointer = Annotated[str, AfterValidator(check_pointer)]
TemplateName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _resolve_body(value: Any) -> Any:
    """A request body or header value: secret references become SecretValue, the rest stays as written."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in ("env", "file", "credential"):
            return _resolve_secret(value)
        return {key: _resolve_body(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_body(item) for item in value]
    return value


Body = Annotated[Any, PlainValidator(_resolve_body)]


class HttpConfig(ProviderBase):
    """A declarative login: any token API described by its request and where its answer holds the token."""

    kind: Literal["http"]
    url: UpstreamURL  # a field here, a property on the other kinds
    method: Literal["GET", "POST", "PUT"] = "POST"
    secrets_: dict[TemplateName, Secret] = Field(default={}, alias="secrets")
    headers: dict[str, Body] = {}
    json_body: Body = Field(default=None, alias="json")
    form: dict[str, Body] | None = None
    token_pointer: JsonPointer
    expiry_pointer: JsonPointer | None = None
    expiry_format: Literal["unix", "unix_ms", "iso8601", "seconds", "jwt"] = "unix"
    token_type: str = "Bearer"
    token_type_pointer: JsonPointer | None = None
    request_id_pointer: JsonPointer | None = None
    serve_headers: dict[str, str] = {"Authorization": "Bearer {token}"}
    serve_query: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self) -> HttpConfig:
        if self.json_body is not None and self.form is not None:
            raise ValueError("set json or form as the login body, not both")
        if self.expiry_format == "jwt" and self.expiry_pointer is not None:
            raise ValueError('expiry_format = "jwt" reads the token\'s exp claim; remove expiry_pointer')
        known = set(self.secrets_)
        for where, text in _strings({"headers": self.headers, "json": self.json_body, "form": self.form}):
            _check_template(where, text, known)
        for where, text in _strings({"serve_headers": self.serve_headers, "serve_query": self.serve_query}):
            _check_template(where, text, known | {"token"})
        if not self.serve_headers and not self.serve_query:
            raise ValueError("serve_headers and serve_query are both empty: clients would get nothing to send")
        return self


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def _check_template(where: str, text: str, known: set[str]) -> None:
    try:
        template.check(text, known)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


class StaticConfig(ProviderBase):
    """Any static API key, served as a header (with an optional scheme) and/or a query parameter."""

    kind: Literal["static"]
    key: Secret
    header: str | None = "Authorization"
    scheme: str = "Bearer"  # "" sends the key bare, as Flotiq's X-AUTH-TOKEN wants
    query_param: str | None = None
    token_type: str = "api_key"

    @model_validator(mode="after")
    def _served_somehow(self) -> StaticConfig:
        if not self.header and not self.query_param:
            raise ValueError("set header or query_param (or both): how clients send the key")
        return self

    @property
    def url(self) -> None:
        """A static key has no login URL (the other kinds name theirs here, for `tokend check`)."""
        return None


ProviderConfig = Annotated[
    FellohConfig
    | FintechStudiosConfig
    | FlotiqConfig
    | OAuth2ClientCredentialsConfig
    | HttpConfig
    | StaticConfig,
    Field(discriminator="kind"),
]
PROVIDER_KINDS = ("felloh", "fintech_studios", "flotiq", "oauth2_client_credentials", "http", "static")
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
    """A local program allowed to read some providers' tokens, known by its key (scoped like Flotiq's
    user-defined keys). Once any client is defined, every token and status request needs a key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Secret
    providers: tuple[ProviderName, ...] = Field(min_length=1)
    # May also use its providers' admin endpoints (Felloh key management) and POST /reload.
    admin: bool = False

    @model_validator(mode="after")
    def _long_enough(self) -> ClientConfig:
        if len(self.key.get()) < MIN_CLIENT_KEY_LENGTH:
            raise ValueError(f"key must be at least {MIN_CLIENT_KEY_LENGTH} characters: make one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return self


from tokend.fleet.config import FleetConfig  # noqa: E402 (it uses Secret and Seconds from above)


class Settings(BaseSettings):
    """The whole configuration. Environment variables `TOKEND_SERVER__PORT=9000` override the file."""

    model_config = SettingsConfigDict(
        env_prefix="TOKEND_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    providers: dict[ProviderName, ProviderConfig] = {}
    clients: dict[ProviderName, ClientConfig] = {}
    fleet: FleetConfig | None = None

    @model_validator(mode="after")
    def _fleet_rotates_no_felloh_keys(self) -> Settings:
        if self.fleet is not None and (refused := self.fleet.refused_rotations(self.providers)):
            raise ValueError(refused)
        return self

    @model_validator(mode="after")
    def _clients_name_providers(self) -> Settings:
        seen: dict[str, str] = {}
        for name, client in self.clients.items():
            for provider in client.providers:
                if provider not in self.providers:
                    raise ValueError(f'client "{name}", field "providers": no provider is named "{provider}"')
            if (other := seen.setdefault(client.key.get(), name)) != name:
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

        try:
            return _FromFile()
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
        except ValidationError as exc:
            # `from None`: the ValidationError carries the input values, secrets included.
            problems = [_describe(error) for error in exc.errors(include_input=False, include_url=False)]
            raise ConfigError(f"{path} has {len(problems)} problem(s)", problems) from None


def _describe(error: Any) -> str:
    """One sentence for one validation error, naming the provider and the field. Never the value."""
    loc = [str(part) for part in error["loc"]]
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


def _message(error: Any) -> str:
    kinds = ", ".join(f'"{k}"' for k in PROVIDER_KINDS)
    match error["type"]:
        case "union_tag_invalid":
            return f'unknown kind "{error["ctx"]["tag"]}"; kind must be one of {kinds}'
        case "union_tag_not_found":
            return f"kind is missing; it must be one of {kinds}"
        case "missing":
            return "is required but missing"
        case "extra_forbidden":
            return "is not a known setting (a typo?)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
