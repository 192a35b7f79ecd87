"""What Felloh adds to the daemon: the key admin routes, and scheduled rotation of key pairs that have
reached `rotate_every` (the key file's age is the key's age: it survives restarts, and a rotation by hand
resets it)."""

from __future__ import annotations

import functools
import logging
import time

from fastapi import APIRouter

from tokend.errors import TokendError
from tokend.extensions import DaemonParts
from tokend.providers.felloh.keys import felloh_config, rotate
from tokend.providers.felloh.login import FellohConfig
from tokend.providers.felloh.routes import felloh_router

log = logging.getLogger("tokend")

MAX_CHECK_INTERVAL = 3600.0  # look at a key's age at least hourly, and ten times per rotate_every


class FellohExtension:
    def __init__(self, parts: DaemonParts) -> None:
        self._parts = parts

    def router(self) -> APIRouter:
        return felloh_router(self._parts)

    async def start(self) -> None:
        self._schedule_rotations()

    async def stop(self) -> None:
        pass  # the scheduler's jobs end with the scheduler

    def reloaded(self) -> None:
        self._schedule_rotations()

    def _schedule_rotations(self) -> None:
        manager, scheduler = self._parts.manager, self._parts.scheduler
        for name in manager.names:
            config = manager.provider_config(name)
            if isinstance(config, FellohConfig) and config.rotate_every is not None:
                interval = min(config.rotate_every / 10, MAX_CHECK_INTERVAL)
                scheduler.every(interval, functools.partial(self._rotate_if_due, name), f"rotate-{name}")

    async def _rotate_if_due(self, name: str) -> None:
        if name not in self._parts.manager.names:
            return  # removed by a reload since this job was scheduled
        config = felloh_config(self._parts.manager, name)
        if config.rotate_every is None:
            return  # rotate_every taken out by a reload
        assert config.public_key.path is not None and config.organisation
        try:
            age = time.time() - config.public_key.path.stat().st_mtime
        except OSError as exc:
            log.warning("rotation_skipped provider=%s reason=unreadable path=%s error=%s", name, config.public_key.path,
                        exc.strerror)
            return
        if age < config.rotate_every:
            return
        try:
            result = await rotate(self._parts, name, config.organisation)
        except TokendError as exc:
            log.warning("rotation_failed provider=%s reason=scheduled error=%s", name, exc.message)
            return
        if result.warning:
            log.warning("rotation_warning provider=%s reason=scheduled warning=%s", name, result.warning)
