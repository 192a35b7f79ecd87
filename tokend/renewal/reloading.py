"""Reload: the config file read again on SIGHUP or `tokend reload`, and applied without a restart.

The new file is validated whole before anything changes: a config that fails validation is refused
with the same messages as at start, and the running one stays. What a reload does to each provider is
in manager.Changes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from tokend.config.audit import audit, log_findings, refuse_exposures
from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.renewal.changes import Changes
from tokend.renewal.manager import Manager

log = logging.getLogger("tokend")


class Reloader:
    """Use as `async with Reloader(manager, path):` inside the manager's lifetime; SIGHUP reloads."""

    def __init__(self, manager: Manager, path: Path, *, then: Sequence[Callable[[], None]] = ()) -> None:
        """`then`: called after each reload that was applied (the extensions' `reloaded`)."""
        self._manager = manager
        self._then = then
        self.path = path
        self._lock = asyncio.Lock()  # one reload at a time: two SIGHUPs must not interleave
        self._signal_installed = False
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds only weak references to tasks

    async def reload(self, reason: str) -> Changes:
        """Read and apply the config file; ConfigError (nothing changed) if it does not validate."""
        async with self._lock:
            try:
                settings = await asyncio.to_thread(Settings.load, self.path)
                findings = audit(settings, self.path)
                refuse_exposures(findings)
            except ConfigError as exc:
                # A TOML syntax error is its own one problem: say it once, not again as a detail.
                details = exc.problems if exc.problems != [exc.message] else []
                log.error("reload_refused reason=%s error=%s next=keep_running_config%s", reason, exc.message,
                          "".join(f"\n  {problem}" for problem in details))
                raise
            changes = self._manager.apply(settings)
            for then in self._then:
                then()
        log.info("reload reason=%s added=%s changed=%s removed=%s unchanged=%d", reason, _names(changes.added),
                 _names(changes.changed), _names(changes.removed), len(changes.unchanged))
        if changes.restart_needed:
            log.warning("reload_needs_restart tables=[%s] hint=%s", "], [".join(changes.restart_needed),
                        "these apply only at start: restart tokend to use them")
        log_findings(findings)
        return changes

    async def __aenter__(self) -> Reloader:
        # Signal handlers belong to the main thread (tests run the daemon in other threads too).
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal_installed = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._signal_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self) -> None:
        try:
            await self.reload("SIGHUP")
        except ConfigError:
            pass  # reload() has logged why; a signal has nobody else to tell
        except Exception:
            log.exception("reload_failed reason=SIGHUP")


def _names(names: list[str]) -> str:
    return ",".join(names) or "-"
