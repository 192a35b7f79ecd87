"""Secret references in the config: `{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`, or
(with a warning) a plain string, resolved while the config is validated.

A missing variable or an unreadable file is then refused at start, with the provider and the field named.
Both the config and the provider kinds import these types, so they live apart from either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, PlainValidator, SecretStr

__all__ = ["Secret", "SecretValue", "collect_secrets", "reread_secret_files", "resolve_secret"]

ModelT = TypeVar("ModelT", bound=BaseModel)



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


def resolve_secret(raw: Any) -> SecretValue:
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


Secret = Annotated[SecretValue, PlainValidator(resolve_secret)]


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

def collect_secrets(where: str, value: Any, found: dict[str, SecretValue]) -> None:
    if isinstance(value, SecretValue):
        found[where] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            collect_secrets(f"{where}.{key}", item, found)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            collect_secrets(f"{where}[{index}]", item, found)

