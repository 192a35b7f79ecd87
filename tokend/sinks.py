"""File sinks: each new credential written to files, for programs that can only read a file.

    [[providers.fts.sinks]]
    path = "/run/app/fts.token"
    format = "raw"            # raw | json | header | env | template (with template = "...")
    command = ["systemctl", "reload", "app"]   # or: signal = "HUP", pid_file = "/run/app.pid"

The sink writer listens to the manager's announcements (never called from the login code). For each new
credential it renders every sink of the provider, writes those whose bytes changed (atomically: a
temporary file in the same folder, fsync, rename; or in place with `atomic = false`, for a single-file
bind mount), then, once all of them are written, runs the provider's change commands or sends its
signals. A sink that cannot be written is logged and shown in /status; it never stops another sink, a
login or the API. Files are removed at shutdown only with `remove_on_exit = true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, model_validator

from tokend.accounts import group_id, user_id
from tokend.credential import Credential, iso_utc
from tokend.errors import UnknownProvider
from tokend.fields import Seconds
from tokend.outputs import templated

if TYPE_CHECKING:
    from tokend.events import Listener
    from tokend.manager import Manager

__all__ = ["SinkConfig", "SinkWriter", "render"]

log = logging.getLogger("tokend")


def _file_mode(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError('must be a file mode such as 0o600 (or "0600")')
    if value & 0o600 != 0o600:
        raise ValueError(f"{value:#o} must let tokend's own user read and write the file (0o600 at least)")
    return value


def _signal_number(value: Any) -> int:
    name = str(value).upper().removeprefix("SIG")
    number = getattr(signal, f"SIG{name}", None)
    if not isinstance(number, int) or name in ("KILL", "STOP"):
        raise ValueError(f'{value!r} is not a signal to send on change (use a name such as "HUP" or "USR1")')
    return int(number)


class SinkConfig(BaseModel):
    """One file a provider's credential is written to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    format: Literal["raw", "json", "header", "env", "template"] = "raw"
    template: Annotated[str, AfterValidator(templated.check)] | None = None  # format = "template" only
    mode: Annotated[int, PlainValidator(_file_mode)] = 0o600
    owner: str | None = None
    group: str | None = None
    atomic: bool = True
    remove_on_exit: bool = False
    env_prefix: str = Field(default="TOKEND_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    command: tuple[str, ...] | None = Field(default=None, min_length=1)  # run without a shell after a change
    command_timeout: Seconds = 30.0
    signal: Annotated[int, PlainValidator(_signal_number)] | None = None
    pid_file: Path | None = None

    @model_validator(mode="after")
    def _one_way_to_tell(self) -> SinkConfig:
        if not self.path.is_absolute():
            raise ValueError("path must be absolute")
        if self.command is not None and self.signal is not None:
            raise ValueError("set command or signal (with pid_file), not both")
        if (self.signal is None) != (self.pid_file is None):
            raise ValueError("signal and pid_file go together: the signal is sent to the process in pid_file")
        if (self.format == "template") != (self.template is not None):
            raise ValueError('format = "template" and template go together: the template is what the file holds')
        return self


def render(name: str, credential: Credential, sink: SinkConfig) -> bytes:
    """The bytes a sink holds for a credential."""
    if sink.format == "raw":
        return credential.token.encode()
    if sink.template is not None:
        return templated.render(sink.template, credential)
    if sink.format == "json":
        return (json.dumps({
            "provider": name, "token": credential.token, "token_type": credential.token_type,
            "expires_at": iso_utc(credential.expires_at), "headers": dict(credential.headers),
            "query": dict(credential.query),
        }, indent=2) + "\n").encode()
    if sink.format == "header":
        return "".join(f"{header}: {value}\n" for header, value in credential.headers.items()).encode()
    prefix = sink.env_prefix
    lines = {f"{prefix}TOKEN": credential.token, f"{prefix}TOKEN_TYPE": credential.token_type,
             f"{prefix}EXPIRES_AT": iso_utc(credential.expires_at) or ""}
    for header, value in credential.headers.items():
        lines[f"{prefix}HEADER_{_env_name(header)}"] = value
    for parameter, value in credential.query.items():
        lines[f"{prefix}QUERY_{_env_name(parameter)}"] = value
    return "".join(f"{key}={value}\n" for key, value in lines.items()).encode()


def _env_name(text: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in text).upper()


@dataclass
class _SinkState:
    written: bytes | None = None
    written_at: float | None = None
    error: str | None = None
    error_at: float | None = None


class SinkWriter:
    """Use as `async with SinkWriter(manager):` once the manager is started."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._states: dict[tuple[str, Path], _SinkState] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SinkWriter:
        listener = self._manager.announcements.listen()  # from now on: nothing after this is missed
        self._task = asyncio.create_task(self._listen(listener), name="tokend-sinks")
        for name in self._manager.names:  # a credential that landed before the listener was there
            credential = self._manager.current(name, time.time())
            if credential is not None:
                await self.write(name, credential)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for name in self._manager.names:
            for sink in self._sinks(name):
                if sink.remove_on_exit:
                    with contextlib.suppress(FileNotFoundError):
                        sink.path.unlink()

    def status(self, name: str) -> list[dict[str, Any]]:
        """What /status shows of a provider's sinks: never their content."""
        shown = []
        for sink in self._sinks(name):
            state = self._states.get((name, sink.path), _SinkState())
            shown.append({"path": str(sink.path), "ok": state.error is None and state.written is not None,
                          "written_at": iso_utc(state.written_at), "error": state.error,
                          "error_at": iso_utc(state.error_at)})
        return shown

    async def write(self, name: str, credential: Credential) -> None:
        """Write every sink of provider `name` whose bytes change, then tell whoever asked to be told."""
        changed = []
        for sink in self._sinks(name):
            state = self._states.setdefault((name, sink.path), _SinkState())
            try:
                content = render(name, credential, sink)
                if content == state.written:
                    continue
                await asyncio.to_thread(_write_file, sink, content)
            except ValueError as exc:  # a template naming a header this credential has not
                state.error, state.error_at = f"cannot render {sink.path}: {exc}", time.time()
                log.error("sink provider=%s path=%s outcome=error error=%s", name, sink.path, state.error)
                continue
            except OSError as exc:
                state.error, state.error_at = f"cannot write {sink.path}: {exc.strerror or exc}", time.time()
                log.error("sink provider=%s path=%s outcome=error error=%s", name, sink.path, state.error)
                continue
            state.written, state.written_at, state.error, state.error_at = content, time.time(), None, None
            changed.append(sink)
            log.info("sink provider=%s path=%s outcome=written format=%s", name, sink.path, sink.format)
        for sink in changed:
            await self._tell(name, sink)

    def _sinks(self, name: str) -> Sequence[SinkConfig]:
        try:
            return self._manager.provider_config(name).sinks
        except UnknownProvider:  # removed by a reload meanwhile
            return ()

    async def _listen(self, listener: Listener) -> None:
        try:
            async for event in listener:
                if event.credential is None:
                    continue
                try:
                    await self.write(event.name, event.credential)
                except Exception:  # a bug here must not stop the sinks of later credentials
                    log.exception("sink provider=%s outcome=bug", event.name)
        finally:
            await listener.aclose()

    async def _tell(self, name: str, sink: SinkConfig) -> None:
        if sink.command is not None:
            await _run(name, sink)
        elif sink.signal is not None and sink.pid_file is not None:
            _send_signal(name, sink.signal, sink.pid_file)


def _write_file(sink: SinkConfig, content: bytes) -> None:
    uid, gid = _ids(sink)
    if not sink.atomic:  # a single-file bind mount: the file must stay the same inode
        descriptor = os.open(sink.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, sink.mode)
        try:
            os.fchmod(descriptor, sink.mode)
            if uid != -1 or gid != -1:
                os.fchown(descriptor, uid, gid)
            os.write(descriptor, content)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return
    import tempfile  # here: the daemon's memory at start is a budget, and most configs have no sinks

    descriptor, temporary = tempfile.mkstemp(dir=sink.path.parent, prefix=f".{sink.path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, sink.mode)  # before the content is in it: never readable by others
        if uid != -1 or gid != -1:
            os.fchown(descriptor, uid, gid)
        os.write(descriptor, content)
        os.fsync(descriptor)
        os.close(descriptor)
        descriptor = -1
        os.replace(temporary, sink.path)  # a reader sees the old file or the new one, never a part
    except BaseException:
        if descriptor != -1:
            os.close(descriptor)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(sink.path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def _ids(sink: SinkConfig) -> tuple[int, int]:
    """The sink's owner and group as ids (-1: leave as is); OSError, as a write failure, when unknown."""
    try:
        return (-1 if sink.owner is None else user_id(sink.owner),
                -1 if sink.group is None else group_id(sink.group))
    except LookupError as exc:
        raise OSError(str(exc)) from None


async def _run(name: str, sink: SinkConfig) -> None:
    assert sink.command is not None
    try:
        process = await asyncio.create_subprocess_exec(
            *sink.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.error("sink provider=%s command=%s outcome=error error=%s", name, sink.command[0], exc.strerror)
        return
    try:
        async with asyncio.timeout(sink.command_timeout):
            code = await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        log.error("sink provider=%s command=%s outcome=timeout after %gs", name, sink.command[0],
                  sink.command_timeout)
        return
    if code != 0:
        log.warning("sink provider=%s command=%s outcome=error exit_status=%d", name, sink.command[0], code)


def _send_signal(name: str, number: int, pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
        if pid <= 1:
            raise ValueError(pid)
        os.kill(pid, number)
    except (OSError, ValueError, IndexError) as exc:
        log.error("sink provider=%s pid_file=%s outcome=error error=cannot signal (%s)", name, pid_file,
                  getattr(exc, "strerror", None) or "no process id in the file")
