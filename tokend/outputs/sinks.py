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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend.config.accounts import group_id, user_id
from tokend.credential import Credential, iso_utc
from tokend.errors import UnknownProvider
from tokend.outputs import templated
from tokend.outputs.config import SinkConfig
from tokend.outputs.sinkfiles import remove_sink_file, send_signal, write_sink_file

if TYPE_CHECKING:
    from tokend.renewal.events import Listener
    from tokend.renewal.manager import Manager

__all__ = ["SinkWriter", "render"]

log = logging.getLogger("tokend")


def render(name: str, credential: Credential, sink: SinkConfig) -> bytes:
    """The bytes a sink holds for a credential."""
    if sink.format == "raw":
        return credential.token.encode()
    if sink.template is not None:
        return templated.render(sink.template, credential, sink.escape)
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
    return "".join(f"{key}={templated.shell_quoted(value)}\n" for key, value in lines.items()).encode()


def _env_name(text: str) -> str:
    return "".join(char if char.isascii() and char.isalnum() else "_" for char in text).upper()


@dataclass
class _SinkState:
    written: bytes | None = None
    written_at: float | None = None
    error: str | None = None
    error_at: float | None = None


class SinkWriter:
    """Use as `async with SinkWriter(manager):` once the manager is started.

    Each provider's sinks are written by a task of their own, so that one provider's slow command (or a
    slow disk) never holds up another's files. A credential that comes while its provider's task is busy
    waits in one slot: a newer one replaces it, since only the newest is worth writing.
    """

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._states: dict[tuple[str, Path], _SinkState] = {}
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, Credential] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> SinkWriter:
        listener = self._manager.announcements.listen()  # from now on: nothing after this is missed
        self._task = asyncio.create_task(self._listen(listener), name="tokend-sinks")
        for name in self._manager.names:  # a credential that landed before the listener was there
            credential = self._manager.current(name, time.time())
            if credential is not None:
                self._hand_over(name, credential)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in [self._task, *self._writers.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for name in self._manager.names:
            for sink in self._sinks(name):
                if sink.remove_on_exit:
                    try:
                        remove_sink_file(sink.path)
                    except OSError as exc:
                        log.warning("sink provider=%s path=%s outcome=not_removed error=%s", name, sink.path,
                                    exc.strerror or exc)

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
            except (OSError, ValueError) as exc:  # the file stays as it was
                _failed(state, name, sink, f"cannot write {sink.path}: {getattr(exc, 'strerror', None) or exc}")
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
                if event.credential is not None:
                    self._hand_over(event.name, event.credential)
        finally:
            await listener.aclose()

    def _hand_over(self, name: str, credential: Credential) -> None:
        self._waiting[name] = credential
        if name not in self._writers:
            self._writers[name] = asyncio.create_task(self._write_waiting(name), name=f"tokend-sinks-{name}")

    async def _write_waiting(self, name: str) -> None:
        try:
            while (credential := self._waiting.pop(name, None)) is not None:
                try:
                    await self.write(name, credential)
                except Exception:  # a bug here must not stop the sinks of later credentials
                    log.exception("sink provider=%s outcome=bug", name)
        finally:
            del self._writers[name]

    async def _tell(self, name: str, sink: SinkConfig) -> None:
        if sink.command is not None:
            await _run(name, sink)
        elif sink.signal is not None and sink.pid_file is not None:
            try:
                send_signal(sink.pid_file, sink.signal)
            except OSError as exc:
                state = self._states[(name, sink.path)]
                _failed(state, name, sink, f"cannot signal the process in {sink.pid_file}: {exc.strerror or exc}")


def _failed(state: _SinkState, name: str, sink: SinkConfig, error: str) -> None:
    state.error, state.error_at = error, time.time()
    log.error("sink provider=%s path=%s outcome=error error=%s", name, sink.path, error)


def _write_file(sink: SinkConfig, content: bytes) -> None:
    uid, gid = _ids(sink)
    write_sink_file(sink.path, content, mode=sink.mode, uid=uid, gid=gid, atomic=sink.atomic)


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
