"""The config file's own tables: [server] (where the API listens), [upstream] (how providers are reached)
and [[clients]] (who may read which tokens). Models only, below the providers' models and the Settings that
gathers them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tokend.config.accounts import client_group, client_uid
from tokend.config.fields import Seconds, SocketMode, is_loopback_host
from tokend.config.secrets import Secret

__all__ = ["MIN_CLIENT_KEY_LENGTH", "ClientConfig", "ProviderName", "ServerConfig", "UpstreamConfig"]


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
    Proxies come from the environment (HTTPS_PROXY, NO_PROXY, ...); see tokend.providers.upstream.
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
        return None if self.unix_user is None else client_uid(self.unix_user)

    def group(self) -> tuple[int, frozenset[str]] | None:
        """unix_group as (group id, the names of its members); ValueError when there is no such group."""
        return None if self.unix_group is None else client_group(self.unix_group)
