"""What every provider kind is made of: its settings (a ProviderBase model) and its login (a Provider),
named together in a Kind (with the kind's starting table for `tokend init`).

A provider turns its config into a Credential with one call, `fetch(client)`. The HTTP client is handed
in (as google-auth hands in `request`), so tests give it a MockTransport and the daemon shares one pool.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokend.config.fields import GitHost, ProxyListen, Registry, Seconds, UpstreamURL
from tokend.config.secrets import SecretValue, collect_secrets
from tokend.credential import Credential
from tokend.outputs.config import SinkConfig
from tokend.redact import Redactor

__all__ = ["Chained", "Continuing", "Kind", "Provider", "ProviderBase", "Tokens"]


class ProviderBase(BaseModel):
    """The settings every kind has. A kind's model adds its own and names itself in `kind`."""

    # defer_build: the config's union of every kind's model validates a file; a kind's own validator and
    # serializer are built on first use, so kinds a config does not name cost a daemon no memory for them.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    # Whether a login spends a refresh token a rotating server accepts once (a user token): a stop then waits
    # for its login in flight to keep the answer, where any other login is simply cancelled.
    SPENDS_REFRESH_TOKENS: ClassVar[bool] = False

    # The settings that change when a login happens, how long its answer is kept, or where the token goes
    # afterwards, but never what a login sends or gets back: fleet mode shares one login between daemons
    # that differ only in these. Every other setting is part of the login. A kind adds its own with `|`.
    NOT_LOGIN: ClassVar[frozenset[str]] = frozenset({
        "timeout", "connect_timeout", "read_timeout", "min_refresh_interval", "max_retry_delay",
        "expired_retry_delay", "default_lifetime", "max_lifetime", "max_answer_bytes", "sinks", "proxy", "api_url",
        "proxy_listen", "proxy_retry_body_limit", "fleet", "persist", "git_hosts", "git_username",
        "docker_registries", "registry_username",
    })

    # How long before expiry a renewal starts at the latest (None: the renewal policy's own margin). A kind
    # whose clients refresh early themselves (AWS SDKs) sets its own, so they never get one they would refresh.
    RENEW_BEFORE_EXPIRY: ClassVar[float | None] = None

    kind: str
    timeout: Seconds = 10.0  # a whole login, every step included
    connect_timeout: Seconds = 5.0  # to open the connection (a black-holed address fails this fast)
    read_timeout: Seconds | None = None  # between two reads of the answer; default: timeout
    min_refresh_interval: Seconds = 10.0
    max_retry_delay: Seconds = 300.0  # the backoff after failed logins grows up to this
    # ...but while clients ask for a token that has run out, no more than this between two tries.
    expired_retry_delay: Seconds = 15.0
    default_lifetime: Seconds = 3600.0
    max_lifetime: Seconds = 86400.0
    # A login answer larger than this once decoded fails the login (a decompression bomb, a runaway page).
    max_answer_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    sinks: tuple[SinkConfig, ...] = ()  # files each new credential is written to (tokend.outputs.sinks)
    # The auth-injecting proxy (tokend.outputs.proxy): off unless asked for; api_url defaults per kind.
    proxy: bool = False
    api_url: UpstreamURL | None = None
    proxy_listen: ProxyListen | None = None  # "127.0.0.1:9101" or a unix socket path: a listener of its own
    proxy_retry_body_limit: int = Field(default=1 << 20, ge=0)  # bodies up to this are buffered, so retried
    fleet: bool = True  # with [fleet]: share this provider's token with the fleet (false: log in alone)
    persist: bool = True  # with [state]: keep this provider's credential across restarts (false: never stored)
    # Which requests of other tools' own protocols this provider answers (tokend.outputs): git's credential
    # helper asks by host (with the port git gives), Docker's by registry; each is answered with a user name
    # beside the token, a default per kind where the service names one.
    git_hosts: tuple[GitHost, ...] = ()
    git_username: str | None = Field(default=None, min_length=1)
    docker_registries: tuple[Registry, ...] = ()
    registry_username: str | None = Field(default=None, min_length=1)

    @property
    def url(self) -> str | None:
        """The login URL (None: a static key, no login); `tokend check` shows it, logins are gated by its host."""
        return None

    @property
    def proxy_target(self) -> str | None:
        """Where the proxy forwards to: api_url, else the kind's documented API origin, else None."""
        return self.api_url or self._default_api_url()

    def _default_api_url(self) -> str | None:
        return None

    @property
    def proxy_sigv4(self) -> tuple[str, str] | None:
        """(service, region) when the proxy signs this provider's requests with AWS Signature Version 4
        instead of adding the credential's headers; None for every kind but AWS's."""
        return None

    @property
    def git_user(self) -> str | None:
        """The user name git sends with the token: git_username, else the kind's default."""
        return self.git_username or self._default_git_username()

    @property
    def registry_user(self) -> str | None:
        """The user name Docker sends with the token: registry_username, else the kind's default."""
        return self.registry_username or self._default_registry_username()

    def _default_git_username(self) -> str | None:
        return None

    def _default_registry_username(self) -> str | None:
        return None

    @model_validator(mode="after")
    def _proxy_has_target(self) -> ProviderBase:
        if self.proxy and self.proxy_target is None:
            raise ValueError("proxy = true needs api_url, the API origin to forward to (this kind has no default)")
        if self.proxy_listen is not None and not self.proxy:
            raise ValueError("proxy_listen needs proxy = true")
        return self

    @model_validator(mode="after")
    def _tools_have_user_names(self) -> ProviderBase:
        # Asked here rather than when git or Docker asks: a helper that answers no user name makes git
        # prompt for one, and Docker send an empty one.
        if self.git_hosts and self.git_user is None:
            raise ValueError("git_hosts needs git_username, the user name git sends with the token "
                             f"(kind {self.kind} has no default; the server's documentation names it)")
        if self.docker_registries and self.registry_user is None:
            raise ValueError("docker_registries needs registry_username, the user name Docker sends with the "
                             f"token (kind {self.kind} has no default; the registry's documentation names it)")
        return self

    def sources(self) -> tuple[str, ...]:
        """The other providers whose current credentials this provider's login reads (a subject token, a
        source credential to impersonate with, an AWS role assumed with another's); the config refuses unknown
        names, a provider naming itself and loops, then asks `source_problem` of each."""
        return ()

    def source_problem(self, source: str, config: ProviderBase) -> str | None:
        """Why provider `source` (its settings `config`) cannot be one of `sources()` (a sentence naming the
        field), or None: a kind that needs a particular kind of credential says so here."""
        return None

    def key_descriptions(self) -> dict[str, str]:
        """Each private key this provider signs with, by field: its type, size and the fingerprint of its
        public key (`tokend check`); never the key."""
        return {}

    def login_secrets(self) -> dict[str, str]:
        """The secrets that make this provider's login the one it is, by field (fleet mode's keyed share
        hash). A signing kind names its key by fingerprint: the same key in another encoding is the same login."""
        return {where: secret.get() for where, secret in self.secrets().items()}

    def login_identity(self) -> dict[str, Any]:
        """What makes a provider's logins the same: every setting but those its kind names as no part of the
        login (NOT_LOGIN: timing, sinks, the proxy), and the secrets by value (not by where they are read from:
        the same password in another file is the same login), a private key by its public key's fingerprint.
        The secrets only ever enter a keyed hash."""
        secrets = self.secrets()
        secret_fields = {where.split(".")[0].split("[")[0] for where in secrets}
        identity: dict[str, Any] = {"kind": self.kind, "url": self.url}
        # An unset optional secret (a key's passphrase) is skipped too: set or not, it is no part of the identity
        # (the key it opens is, by its fingerprint).
        skipped = {name for name, field in type(self).model_fields.items()
                   if name in self.NOT_LOGIN or (field.alias or name) in secret_fields
                   or (getattr(self, name) is None and "SecretValue" in str(field.annotation))}
        identity.update(self.model_dump(by_alias=True, mode="json", exclude=skipped))
        identity.update({f"secret:{where}": value for where, value in self.login_secrets().items()})
        return identity

    def secrets(self) -> dict[str, SecretValue]:
        """Every secret in this provider's settings, by where it sits (`password`, `secrets.api_key`)."""
        found: dict[str, SecretValue] = {}
        for name, field in type(self).model_fields.items():
            collect_secrets(field.alias or name, getattr(self, name), found)
        return found


ConfigT = TypeVar("ConfigT", bound=ProviderBase)


class Provider(Protocol):
    """One configured provider's login. Built from its name and settings; the redactor scrubs what it reports."""

    name: str

    # `config` is an instance of its kind's settings model (Kind.config); the registry pairs the two.
    def __init__(self, name: str, config: Any, redactor: Redactor) -> None: ...

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        """Log in once and return the new credential, or raise UpstreamError."""
        ...


@runtime_checkable
class Continuing(Protocol):
    """A login that continues from the credential held (a user token spends the refresh token the last
    answer left); the one place that logs in hands that credential in."""

    async def fetch_from(self, client: httpx.AsyncClient, current: Credential | None) -> Credential: ...


class Tokens(Protocol):
    """Other providers' current credentials, as a login that builds on them reads them (the manager's `get`:
    a valid credential, waiting, bounded, for a login under way; TokendError when there is none)."""

    async def get(self, name: str) -> Credential: ...


@runtime_checkable
class Chained(Protocol):
    """A login that reads other providers' credentials (`sources()`) when it happens; the one place that logs
    in hands in how (`tokens`: None where no other provider can be read, and such a login fails saying so)."""

    async def fetch_chained(self, client: httpx.AsyncClient, tokens: Tokens | None) -> Credential: ...


@dataclass(frozen=True)
class Kind(Generic[ConfigT]):
    """A provider kind: the `kind` value, its settings model, its login and its starting table."""

    name: str
    config: type[ConfigT]
    # Its login class, as "module:Class": imported when a provider of the kind is first built, so that a daemon
    # imports the login modules of the kinds its config names and no others (`login_class`).
    provider: str
    # The kind's table for `tokend init`: a working starting point, its secrets as { env } references
    # named after the table, so that it passes `tokend check` once they are set.
    example: str = ""

    def login_class(self) -> type[Provider]:
        """The login class `provider` names, imported on first use."""
        return _imported(self.provider)


@functools.cache
def _imported(name: str) -> type[Provider]:
    module, _, attribute = name.partition(":")
    found: type[Provider] = getattr(importlib.import_module(module), attribute)
    return found
