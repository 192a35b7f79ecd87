"""The `[fleet]` table. Imports no Redis library: every daemon reads this model, fleet or not."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokend.config.fields import Seconds
from tokend.config.secrets import Secret, SecretValue
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


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: Secret  # redis://[user:password@]host:port/db, or rediss:// for TLS
    password: Secret | None = None  # the Redis password, when it is not in the URL
    encryption_key: Secret  # writes (and reads) every record
    old_encryption_keys: list[Secret] = []  # still read during a key rotation, never written with
    namespace: str = Field(default="tokend", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    timeout: Seconds = 0.5  # each Redis call; past it, the daemon logs in by itself
    connect_timeout: Seconds = 1.0  # added to `timeout` for a call that must connect first (TLS: a handshake)
    lease: Seconds = 5.0  # a login's lease lives this long unless renewed (its holder renews it every third)
    ca_bundle: Path | None = None  # the CA that signed the Redis server's certificate (rediss://)
    retry_after: Seconds = 5.0  # after a Redis failure, how long to log in alone before trying Redis again

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretValue) -> SecretValue:
        scheme = urlsplit(value.get()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must start with redis://, rediss:// (TLS) or unix:// (it starts with {scheme!r})")
        return value

    @model_validator(mode="after")
    def _keys_decode(self) -> FleetConfig:
        decode_key(self.encryption_key.get(), "encryption_key")
        for index, key in enumerate(self.old_encryption_keys):
            decode_key(key.get(), f"old_encryption_keys[{index}]")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ValueError(f"ca_bundle {self.ca_bundle} is not a readable file")
        return self

    def key_bytes(self) -> list[bytes]:
        """The key to write with first, then those still accepted for reading."""
        return [decode_key(self.encryption_key.get(), "encryption_key"),
                *(decode_key(key.get(), "old_encryption_keys") for key in self.old_encryption_keys)]

    def secrets(self) -> list[SecretValue]:
        """For the log redactor: the URL may hold the password."""
        url = [self.redis_url] if urlsplit(self.redis_url.get()).password else []
        return [*url, *([self.password] if self.password else []), self.encryption_key, *self.old_encryption_keys]

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


FLEET_ROTATION_REFUSED = (
    "key rotation is refused in fleet mode: the other daemons of the fleet still log in with this key pair, which "
    "a rotation deletes; put the new pair in every daemon's key files instead (or set fleet = false on the provider)"
)

