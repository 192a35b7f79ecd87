"""The `[fleet]` table. Imports no Redis library: every daemon reads this model, fleet or not."""

from __future__ import annotations

import importlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokend.config.fields import Seconds
from tokend.config.secrets import Secret, SecretText, SecretValue
from tokend.sealing import decode_key

# What fleet mode imports, from the `fleet` extra: not installed with tokend itself.
_EXTRA_MODULES = ("redis.asyncio", "cryptography.hazmat.primitives.ciphers.aead")


def missing_extra() -> str | None:
    """Why fleet mode cannot run here (its extra is not installed), or None. Imports what it checks: a
    module that is present but broken fails only then."""
    for module in _EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return (f"[fleet] needs the fleet extra (the redis and cryptography packages), and "
                    f"{module.split('.')[0]} cannot be imported ({exc}): install it with "
                    "`pip install 'tokend[fleet]'`, or from a checkout of tokend `pip install '.[fleet]'`")
    return None


# What a redis_url query key or a setting of redis-py's own is called in [fleet], for the error that refuses it.
_INSTEAD = {
    "ssl_ca_certs": "ca_bundle", "ssl_ca_path": "ca_bundle", "ssl_ca_data": "ca_bundle",
    "ssl_certfile": "client_certificate", "ssl_keyfile": "client_key", "ssl_password": "client_key",
    "ssl_check_hostname": "tls_server_name", "ssl_cert_reqs": "ca_bundle (the certificate is always verified)",
    "service_name": "sentinels and sentinel_service", "sentinel_master": "sentinels and sentinel_service",
    "master_name": "sentinels and sentinel_service", "sentinels": "sentinels",
    "username": "username", "password": "password", "user": "username",
    "socket_timeout": "timeout", "socket_connect_timeout": "connect_timeout", "timeout": "timeout",
    "cluster": "cluster_nodes", "startup_nodes": "cluster_nodes", "protocol": "nothing (tokend chooses)",
}
Mode = Literal["standalone", "sentinel", "cluster"]


def parse_address(text: str, where: str) -> tuple[str, int]:
    """`host:port` (`[::1]:26379` for IPv6) as (host, port)."""
    parts = urlsplit(f"//{text.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.username or parts.password or parts.path or parts.query:
        raise ValueError(f"{where} entry {text!r} is not host:port (for example \"10.0.0.1:26379\")")
    return parts.hostname, port


def _check_url(url: str) -> None:
    """A standalone Redis URL: one host, and no query key but `db` (redis-py would pass any other on to the
    connection, where a typo fails every call)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must start with redis://, rediss:// (TLS) or unix:// (it starts with {parts.scheme!r})")
    if "," in parts.netloc:
        raise ValueError("names several hosts; redis_url is one standalone Redis: for Sentinel list the sentinels "
                         "in `sentinels` (with sentinel_service), for a Cluster list nodes in `cluster_nodes`")
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "db":
            instead = _INSTEAD.get(key.lower())
            hint = f"set {instead} in [fleet] instead" if instead else "tokend takes no connection options in the URL"
            raise ValueError(f"has the query key {key!r}, which tokend does not pass on to Redis: {hint} (only "
                             "`db` is allowed in the query)")
        if not value.isdigit():
            raise ValueError("has a db that is not a number (for example redis://host:6379/0 or ?db=0)")
    path = parts.path.strip("/")
    if parts.scheme != "unix" and path and not path.isdigit():
        raise ValueError("has a path that is not a database number (for example redis://host:6379/0)")


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Exactly one of these three says where Redis is.
    redis_url: Secret | None = None  # standalone: redis://[user:password@]host:port/db, rediss:// for TLS, unix://
    sentinels: list[str] = []  # host:port of each sentinel: the primary is found (and followed) through them
    cluster_nodes: list[str] = []  # host:port of some Cluster nodes: the rest are discovered
    username: str | None = None  # the ACL user (also allowed in redis_url); none: Redis's `default` user
    password: Secret | None = None  # the Redis password, when it is not in the URL
    encryption_key: Secret  # writes (and reads) every record
    old_encryption_keys: list[Secret] = []  # still read during a key rotation, never written with
    # Letters, digits and `_ . -`: a namespace is part of every key name, and the keys carry their own hash
    # tag (`{...}`), so braces would break it, and `:` separates the parts.
    namespace: str = Field(default="tokend", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    timeout: Seconds = 0.5  # each Redis call; past it, the daemon logs in by itself
    connect_timeout: Seconds = 1.0  # added to `timeout` for a call that must connect first (TLS: a handshake)
    lease: Seconds = 5.0  # a login's lease lives this long unless renewed (its holder renews it every third)
    retry_after: Seconds = 5.0  # after a Redis failure, how long to log in alone before trying Redis again
    # Sentinel and Cluster: how long a call waits for a new primary after its own went away (a failover),
    # before the daemon logs in alone. Keep it well under the shortest token lifetime's third.
    failover_timeout: Seconds = 10.0
    tls: bool = False  # TLS to the data nodes found through the sentinels or the cluster (rediss:// for redis_url)
    ca_bundle: Path | None = None  # the CA(s) trusted for the server's certificate; none: the system's
    client_certificate: Path | None = None  # mutual TLS: this daemon's certificate (PEM), with client_key
    client_key: SecretText | None = None  # its private key (PEM)
    tls_server_name: str | None = None  # the name checked in the server's certificate; none: the host connected to
    sentinel_service: str | None = None  # the name the sentinels monitor the primary under
    sentinel_username: str | None = None  # the sentinels' own ACL user, when they have one
    sentinel_password: Secret | None = None
    sentinel_tls: bool = False  # TLS to the sentinels too (with the same CA and client certificate)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretValue | None) -> SecretValue | None:
        if value is not None:
            _check_url(value.get())
        return value

    @field_validator("sentinels", "cluster_nodes")
    @classmethod
    def _addresses(cls, value: list[str], info: Any) -> list[str]:
        for entry in value:
            parse_address(entry, info.field_name)
        return value

    @model_validator(mode="after")
    def _keys_decode(self) -> FleetConfig:
        decode_key(self.encryption_key.get(), "encryption_key")
        for index, key in enumerate(self.old_encryption_keys):
            decode_key(key.get(), f"old_encryption_keys[{index}]")
        for name in ("ca_bundle", "client_certificate"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        return self

    @model_validator(mode="after")
    def _one_deployment(self) -> FleetConfig:
        given = [name for name in ("redis_url", "sentinels", "cluster_nodes") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of redis_url (one Redis), sentinels (Sentinel) or cluster_nodes "
                             f"(Cluster); {'none is set' if not given else ' and '.join(given) + ' are set'}")
        if self.sentinels and not self.sentinel_service:
            raise ValueError("sentinels needs sentinel_service: the name the sentinels monitor the primary under "
                             "(`sentinel monitor NAME ...` in sentinel.conf)")
        if not self.sentinels:
            extra = [name for name in ("sentinel_service", "sentinel_username", "sentinel_password")
                     if getattr(self, name) is not None] + (["sentinel_tls"] if self.sentinel_tls else [])
            if extra:
                raise ValueError(f"{', '.join(extra)} apply only with sentinels")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together (mutual TLS): set both or neither")
        if self.redis_url is not None:
            self._url_matches_settings(urlsplit(self.redis_url.get()))
        elif not (self.tls or self.sentinel_tls):
            self._no_tls_settings("tls = true" if self.cluster_nodes else "tls = true (or sentinel_tls = true)")
        if self.data_tls or self.sentinel_tls:
            try:
                tls_context(self)  # a CA file or a key pair that does not load is refused now, not at the first call
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"ca_bundle, client_certificate or client_key cannot be loaded ({exc.strerror or exc})"
                                 ": check that they are PEM files and that the key is the certificate's") from None
        return self

    def _url_matches_settings(self, parts: Any) -> None:
        if self.tls:
            raise ValueError("tls applies to sentinels and cluster_nodes; for redis_url, TLS is rediss://")
        if parts.scheme != "rediss":
            self._no_tls_settings("rediss://")
        if parts.username and self.username and parts.username != self.username:
            raise ValueError("redis_url names one user and username another: give the user once")
        if parts.password and self.password is not None:
            raise ValueError("redis_url holds a password and password is set too: give the password once")

    def _no_tls_settings(self, needed: str) -> None:
        tls_settings = [name for name in ("ca_bundle", "client_certificate", "tls_server_name")
                        if getattr(self, name) is not None]
        if tls_settings:
            raise ValueError(f"{', '.join(tls_settings)} would not be used: Redis is reached without TLS; "
                             f"use {needed}")

    @property
    def mode(self) -> Mode:
        return "sentinel" if self.sentinels else "cluster" if self.cluster_nodes else "standalone"

    @property
    def data_tls(self) -> bool:
        """Whether the data nodes (the primary, the cluster's nodes) are reached over TLS."""
        return self.tls if self.redis_url is None else urlsplit(self.redis_url.get()).scheme == "rediss"

    @property
    def user(self) -> str | None:
        """The ACL user this daemon signs in as (the URL's or `username`), None for Redis's `default`."""
        from_url = urlsplit(self.redis_url.get()).username if self.redis_url is not None else None
        return self.username or from_url or None

    def key_bytes(self) -> list[bytes]:
        """The key to write with first, then those still accepted for reading."""
        return [decode_key(self.encryption_key.get(), "encryption_key"),
                *(decode_key(key.get(), "old_encryption_keys") for key in self.old_encryption_keys)]

    def secrets(self) -> list[SecretValue]:
        """For the log redactor: the URL may hold the password."""
        url = [self.redis_url] if self.redis_url is not None and urlsplit(self.redis_url.get()).password else []
        others = [secret for secret in (self.password, self.sentinel_password, self.client_key) if secret is not None]
        return [*url, *others, self.encryption_key, *self.old_encryption_keys]

    def refused_rotations(self, providers: Mapping[str, Any]) -> str | None:
        """Felloh key rotation replaces the pair one daemon logs in with; the other daemons of the fleet
        still hold the old pair, whose key the rotation deletes. So in fleet mode it is refused."""
        rotating = [name for name, config in providers.items()
                    if getattr(config, "rotate_every", None) is not None and config.fleet]
        if not rotating:
            return None
        return (f"provider(s) {', '.join(rotating)}: rotate_every cannot be used in fleet mode, since a rotation "
                "would delete the key pair the other daemons log in with; rotate the key files on every daemon "
                "instead, or set fleet = false on the provider")


def tls_context(config: FleetConfig) -> ssl.SSLContext:
    """Verification always on: against ca_bundle, or the system's trust store without one. Built once: the
    client key is loaded into it and never kept on disk by tokend (a key that is not already a file goes
    through a 0600 temporary file, removed once loaded)."""
    context = ssl.create_default_context(cafile=str(config.ca_bundle) if config.ca_bundle else None)
    if config.client_certificate is not None and config.client_key is not None:
        key = config.client_key
        if key.path is not None:
            context.load_cert_chain(str(config.client_certificate), str(key.path))
        else:
            # Python's ssl loads a key from a file only.
            with tempfile.TemporaryDirectory(prefix="tokend-redis-") as folder:
                path = os.path.join(folder, "client.key")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                    file.write(key.get() + "\n")
                context.load_cert_chain(str(config.client_certificate), path)
    return context


FLEET_ROTATION_REFUSED = (
    "key rotation is refused in fleet mode: the other daemons of the fleet still log in with this key pair, which "
    "a rotation deletes; put the new pair in every daemon's key files instead (or set fleet = false on the provider)"
)

