"""Secret references in the config: `{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`, or
(with a warning) a plain string, resolved while the config is validated.

A missing variable or an unreadable file is then refused at start, with the provider and the field named.
Both the config and the provider kinds import these types, so they live apart from either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, PlainValidator, SecretStr

__all__ = [
    "Secret",
    "SecretText",
    "SecretValue",
    "collect_secrets",
    "config_directory",
    "config_relative",
    "reread_secret_files",
    "resolve_secret",
    "resolve_secret_text",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

# The folder of the config file being loaded: relative secret file paths are resolved from it, as systemd
# and nginx resolve theirs, not from whatever directory tokend happened to be started in.
_CONFIG_DIRECTORY: ContextVar[Path | None] = ContextVar("tokend_config_directory", default=None)

_CONTROL_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte"}


@contextlib.contextmanager
def config_directory(directory: Path) -> Iterator[None]:
    """Resolve relative secret file paths from `directory` while the config is validated."""
    reset = _CONFIG_DIRECTORY.set(directory.absolute())
    try:
        yield
    finally:
        _CONFIG_DIRECTORY.reset(reset)



@dataclass(frozen=True)
class SecretValue:
    """A resolved secret and where it came from (`source` is safe to show: it never holds the value)."""

    value: SecretStr
    source: str
    path: Path | None = None
    # A PEM key or a JSON key file spans lines, and is never sent as a header: line breaks are its own.
    multiline: bool = False

    @property
    def plain(self) -> bool:
        return self.source == "plain string"

    def get(self) -> str:
        return self.value.get_secret_value()


def _checked(value: str, where: str, *, multiline: bool = False) -> str:
    """`value`, or ValueError if it holds a control character: a secret is sent inside HTTP headers and
    bodies, where a line break or a NUL breaks the request, and the HTTP library's error would then quote
    the header, secret and all. The message names the character, never the value."""
    for char in value:
        if multiline and char in "\n\r\t":
            continue
        if ord(char) < 0x20 or ord(char) == 0x7F:
            name = _CONTROL_NAMES.get(char, f"the control character U+{ord(char):04X}")
            raise ValueError(f"{where} holds {name} inside the secret or after it (only one final line break "
                             "is taken off); remove it")
    return value


def config_relative(path: Path) -> Path:
    """`path` made absolute as a secret file's is: relative to the config file's folder."""
    return _absolute(path)


def _absolute(path: Path) -> Path:
    if path.is_absolute():
        return path
    return (_CONFIG_DIRECTORY.get() or Path.cwd().absolute()) / path


def _read_secret_file(path: Path, what: str, *, multiline: bool = False) -> SecretValue:
    path = _absolute(path)
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
    checked = _checked(value, f"{what} {path}", multiline=multiline)
    return SecretValue(SecretStr(checked), f"file {path}", path, multiline)


def _secret_from_env(name: str, *, multiline: bool = False) -> SecretValue:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    if not value:
        raise ValueError(f"environment variable {name} is empty")
    checked = _checked(value, f"environment variable {name}", multiline=multiline)
    return SecretValue(SecretStr(checked), f"env {name}", multiline=multiline)


def _secret_from_credential(name: str, *, multiline: bool = False) -> SecretValue:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(
            f"credential {name!r} needs $CREDENTIALS_DIRECTORY, which systemd sets for LoadCredential=; "
            "it is not set"
        )
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"credential name {name!r} must be a plain file name")
    return _read_secret_file(Path(directory) / name, "credential file", multiline=multiline)


_SECRET_SOURCES = {"env": _secret_from_env, "credential": _secret_from_credential}


def resolve_secret(raw: Any, *, multiline: bool = False) -> SecretValue:
    if isinstance(raw, SecretValue):
        return raw
    if isinstance(raw, str):
        if not raw:
            raise ValueError("is empty")
        return SecretValue(SecretStr(_checked(raw, "the string", multiline=multiline)), "plain string",
                           multiline=multiline)
    if isinstance(raw, dict) and len(raw) == 1:
        (how, where), = raw.items()
        if how == "file" and isinstance(where, str) and where:
            return _read_secret_file(Path(where), "secret file", multiline=multiline)
        if how in _SECRET_SOURCES and isinstance(where, str) and where:
            return _SECRET_SOURCES[how](where, multiline=multiline)
    raise ValueError('must be { env = "NAME" }, { file = "/path" }, { credential = "name" } or a string')


def resolve_secret_text(raw: Any) -> SecretValue:
    """A secret that may span lines (a PEM private key, a service account's JSON key file)."""
    return resolve_secret(raw, multiline=True)


Secret = Annotated[SecretValue, PlainValidator(resolve_secret)]
SecretText = Annotated[SecretValue, PlainValidator(resolve_secret_text)]


def reread_secret_files(config: ModelT) -> ModelT:
    """`config` with every `{ file }` and `{ credential }` secret read again from disk.

    For a key changed on disk while tokend runs. Raises ValueError (naming the file, never its content)
    when a file can no longer be used, for example while it is being rewritten.
    """
    return _reread(config)  # type: ignore[no-any-return]


def _reread(value: Any) -> Any:
    if isinstance(value, SecretValue):
        if value.path is None:
            return value
        return _read_secret_file(value.path, "secret file", multiline=value.multiline)
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

