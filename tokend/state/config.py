"""The `[state]` table: where the state folder is and the key its records are sealed with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from tokend.config.secrets import Secret, SecretValue
from tokend.sealing import decode_key

__all__ = ["StateConfig", "default_state_path"]


def default_state_path(environ: Mapping[str, str] | None = None, *, root: bool | None = None) -> Path:
    """systemd's StateDirectory= ($STATE_DIRECTORY, its first entry), else /var/lib/tokend for root, else
    $XDG_STATE_HOME/tokend (~/.local/state/tokend): where the XDG base directory spec keeps state."""
    environ = os.environ if environ is None else environ
    if given := environ.get("STATE_DIRECTORY"):
        return Path(given.split(":")[0])
    if os.geteuid() == 0 if root is None else root:
        return Path("/var/lib/tokend")
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "tokend"


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = None  # None: default_state_path()
    encryption_key: Secret  # 32 bytes, base64: seals every record (`openssl rand -base64 32`)

    @model_validator(mode="after")
    def _key_decodes(self) -> StateConfig:
        decode_key(self.encryption_key.get(), "encryption_key")
        if self.path is not None and not self.path.is_absolute():
            raise ValueError(f"path {self.path} must be absolute (the daemon's working directory is no place "
                             "for state)")
        return self

    @property
    def folder(self) -> Path:
        return self.path or default_state_path()

    def key_bytes(self) -> bytes:
        return decode_key(self.encryption_key.get(), "encryption_key")

    def secrets(self) -> list[SecretValue]:
        return [self.encryption_key]
