"""Secret references in the config: `{ env = "NAME" }`, `{ file = "/path" }`, `{ credential = "name" }`,
`{ command = ["prog", "arg"] }` (the first line it prints), `{ keyring = "service/username" }` (the OS keyring,
with the `keyring` extra), or (with a warning) a plain string, resolved while the config is validated.

A missing variable, an unreadable file or a failing command is then refused at start, with the provider and
the field named. Both the config and the provider kinds import these types, so they live apart from either.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, PlainValidator, SecretStr

from tokend.config.secret_files import KEY_FILE_LIMIT, NotAFile, read_regular_file

__all__ = [
    "Secret",
    "SecretText",
    "SecretValue",
    "collect_secrets",
    "config_directory",
    "config_relative",
    "reread_secret_files",
    "reread_secrets",
    "resolve_secret",
    "resolve_secret_text",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

# The folder of the config file being loaded: relative secret file paths are resolved from it, as systemd
# and nginx resolve theirs, not from whatever directory tokend happened to be started in.
_CONFIG_DIRECTORY: ContextVar[Path | None] = ContextVar("tokend_config_directory", default=None)

COMMAND_TIMEOUT = 10.0  # seconds a `{ command }` or `{ keyring }` may take (`timeout = SECONDS` beside it)
LINE_LIMIT = 64 * 1024  # bytes of a command's first line kept at most; a secret spanning lines: KEY_FILE_LIMIT

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
    # How to read it anew where that may give another value (a command run again, the keyring asked again).
    again: Callable[[], SecretValue] | None = field(default=None, compare=False, repr=False)

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
        text = read_regular_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror})") from None
    except NotAFile as exc:
        raise ValueError(f"{what} {path} {exc}") from None
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


def _secret_from_command(argv: list[str], timeout: float, *, multiline: bool = False) -> SecretValue:
    """The first line `argv` prints (all it prints, but one final line break, for a secret that spans lines: a
    PEM key), run without a shell. What it writes to stderr is never shown: a password manager may print the
    value there, or more than the value."""
    what = f"command {argv[0]}"
    code, output = _run(argv, timeout, what, first_line=not multiline)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
        raise ValueError(f"{what} {how}; its output is not shown, since it may hold the secret: run it yourself "
                         "to see why")
    try:
        text = output.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{what} printed something that is not UTF-8 text") from None
    value = text.removesuffix("\n") if multiline else text.split("\n", 1)[0]
    value = value.removesuffix("\r")
    if not value:
        raise ValueError(f"{what} printed nothing" + ("" if multiline else " on its first line"))
    return SecretValue(SecretStr(_checked(value, what, multiline=multiline)), what, multiline=multiline,
                       again=lambda: _secret_from_command(argv, timeout, multiline=multiline))


def _run(argv: list[str], timeout: float, what: str, *, first_line: bool) -> tuple[int, bytes]:
    """(exit status, what is kept of stdout: its first line, or all of it for a secret spanning lines, within
    a bound; the rest is read and dropped, so that the command can finish). stderr goes nowhere. In a session of
    its own, so that on a timeout its whole process group is killed: a child it started would otherwise hold
    the pipe open past the timeout."""
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    except FileNotFoundError:
        raise ValueError(f"{what} was not found (give its full path, or put it on PATH)") from None
    except PermissionError:
        raise ValueError(f"{what} cannot be run (permission denied: is it executable?)") from None
    except OSError as exc:
        raise ValueError(f"{what} cannot be run ({exc.strerror})") from None
    deadline = time.monotonic() + timeout
    with child:
        try:
            assert child.stdout is not None
            output = _kept_output(child.stdout.fileno(), deadline, what, first_line=first_line)
            child.wait(max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, TimeoutError):
            raise ValueError(f"{what} did not finish within {timeout:g}s (set timeout = SECONDS beside "
                             "command)") from None
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
    return child.returncode, output


def _kept_output(descriptor: int, deadline: float, what: str, *, first_line: bool) -> bytes:
    """Read `descriptor` to its end (TimeoutError past `deadline`), keeping the first line (LINE_LIMIT at most)
    or everything (KEY_FILE_LIMIT at most); ValueError past the bound."""
    limit = LINE_LIMIT if first_line else KEY_FILE_LIMIT
    kept, keeping = bytearray(), True
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not selector.select(remaining):
                continue
            chunk = os.read(descriptor, 65536)
            if not chunk:
                return bytes(kept)
            if not keeping:
                continue
            kept += chunk
            if first_line and (end := kept.find(b"\n")) != -1:
                del kept[end + 1:]
                keeping = False
            if len(kept) > limit:
                raise ValueError(f"{what} printed a first line longer than {limit} bytes" if first_line
                                 else f"{what} printed more than {limit} bytes, more than any key")


def _command(raw: dict[str, Any], *, multiline: bool = False) -> SecretValue:
    argv, timeout = raw.get("command"), raw.get("timeout", COMMAND_TIMEOUT)
    if set(raw) - {"command", "timeout"}:
        raise ValueError("{ command = [...] } takes only timeout beside it")
    if not isinstance(argv, list) or not argv or not all(isinstance(arg, str) and arg for arg in argv):
        raise ValueError('command must be a list of strings: the program and its arguments (no shell), as '
                         '{ command = ["op", "read", "op://vault/item/field"] }')
    return _secret_from_command(argv, _seconds(timeout, "the command's"), multiline=multiline)


def _keyring(raw: dict[str, Any], *, multiline: bool = False) -> SecretValue:
    where, timeout = raw.get("keyring"), raw.get("timeout", COMMAND_TIMEOUT)
    if set(raw) - {"keyring", "timeout"}:
        raise ValueError("{ keyring = ... } takes only timeout beside it")
    if not isinstance(where, str) or not where:
        raise ValueError('keyring must be "service/username"')
    return _secret_from_keyring(where, _seconds(timeout, "the keyring's"), multiline=multiline)


def _secret_from_keyring(where: str, timeout: float = COMMAND_TIMEOUT, *, multiline: bool = False) -> SecretValue:
    """The OS keyring's password for `service/username` (split at the last `/`: a service may be a URL)."""
    service, slash, username = where.rpartition("/")
    if not slash or not service or not username:
        raise ValueError(f'keyring {where!r} must be "service/username"')
    try:
        import keyring  # only here: the extra is optional, and loading it picks a backend
    except ImportError:
        raise ValueError("{ keyring } needs the keyring extra: install it with `pip install 'tokend[keyring]'`, or "
                         "from a checkout of tokend `pip install '.[keyring]'`") from None
    value, backend = _asked_in_time(lambda: (keyring.get_password(service, username),
                                             type(keyring.get_keyring()).__name__), timeout, f"keyring {where}")
    if value is None:
        raise ValueError(f"keyring {where}: no password for service {service!r}, username {username!r} in the "
                         f"keyring ({backend})")
    checked = _checked(value, f"keyring {where}", multiline=multiline)
    return SecretValue(SecretStr(checked), f"keyring {where}", multiline=multiline,
                       again=lambda: _secret_from_keyring(where, timeout, multiline=multiline))


def _asked_in_time(ask: Callable[[], tuple[str | None, str]], timeout: float, what: str) -> tuple[str | None, str]:
    """`ask()`'s answer, in a thread given `timeout` seconds (a backend waiting on a desktop session that never
    answers would hang `tokend check` and the start), or ValueError. Any error of the backend becomes a
    sentence naming its type only: its text may hold what it read, the secret included."""
    answer: list[tuple[str | None, str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            answer.append(ask())
        except BaseException as exc:  # reported below by its type alone
            failure.append(exc)

    worker = threading.Thread(target=run, name="tokend-keyring", daemon=True)  # left behind if it never returns
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ValueError(f"{what}: the keyring did not answer within {timeout:g}s (set timeout = SECONDS beside "
                         "keyring)")
    if failure:
        raise ValueError(f"{what}: the keyring failed ({type(failure[0]).__name__})")
    return answer[0]


def _seconds(value: Any, whose: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{whose} timeout must be a number of seconds above 0")
    return float(value)


_SECRET_SOURCES = {"env": _secret_from_env, "credential": _secret_from_credential}


def resolve_secret(raw: Any, *, multiline: bool = False) -> SecretValue:
    if isinstance(raw, SecretValue):
        return raw
    if isinstance(raw, str):
        if not raw:
            raise ValueError("is empty")
        return SecretValue(SecretStr(_checked(raw, "the string", multiline=multiline)), "plain string",
                           multiline=multiline)
    if isinstance(raw, dict) and "command" in raw:
        return _command(raw, multiline=multiline)
    if isinstance(raw, dict) and "keyring" in raw:
        return _keyring(raw, multiline=multiline)
    if isinstance(raw, dict) and len(raw) == 1:
        (how, where), = raw.items()
        if how == "file" and isinstance(where, str) and where:
            return _read_secret_file(Path(where), "secret file", multiline=multiline)
        if how in _SECRET_SOURCES and isinstance(where, str) and where:
            return _SECRET_SOURCES[how](where, multiline=multiline)
    raise ValueError('must be { env = "NAME" }, { file = "/path" }, { credential = "name" }, { command = [...] }, '
                     '{ keyring = "service/username" } or a string')


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
    return _reread(config, every=False)  # type: ignore[no-any-return]


def reread_secrets(config: ModelT) -> ModelT:
    """`config` with every secret that can give a new value read again: files, commands (run again) and the
    keyring. For a login the provider refused: the secret may have been changed where it is kept. Blocking
    (a command may take its timeout): call it from a thread. Raises ValueError as reread_secret_files does."""
    return _reread(config, every=True)  # type: ignore[no-any-return]


def _reread(value: Any, *, every: bool) -> Any:
    if isinstance(value, SecretValue):
        if value.path is not None:
            return _read_secret_file(value.path, "secret file", multiline=value.multiline)
        return value.again() if every and value.again is not None else value
    if isinstance(value, BaseModel):
        return value.model_copy(
            update={name: _reread(getattr(value, name), every=every) for name in type(value).model_fields})
    if isinstance(value, dict):
        return {key: _reread(item, every=every) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_reread(item, every=every) for item in value)
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

