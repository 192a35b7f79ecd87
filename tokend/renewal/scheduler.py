"""The daemon's timers: one APScheduler for renewals, retries and the periodic jobs of other parts.

The daemon owns it and lends it to whoever needs a timer (the manager's renewals, the secret-file watcher,
Felloh's rotation checks, the systemd watchdog), so that no part starts a scheduler or a loop of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

__all__ = ["Clock", "Scheduler"]


class Scheduler:
    """Use as `async with Scheduler() as scheduler:`; jobs added before entry or after exit are ignored."""

    def __init__(self) -> None:
        self._scheduler: AsyncIOScheduler | None = None

    async def __aenter__(self) -> Scheduler:
        # misfire_grace_time=None: a job due while the loop was busy or the machine slept still runs.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
        )
        self._scheduler.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def at(self, job_id: str, delay: float, job: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run `job(*args)` once, `delay` seconds from now, replacing any job of the same id. False when
        the scheduler is not running (before start, or after shutdown)."""
        if self._scheduler is None or not self._scheduler.running:
            return False
        self._scheduler.add_job(
            job, "date", run_date=datetime.now(UTC) + timedelta(seconds=delay), args=list(args), id=job_id,
            replace_existing=True,
        )
        return True

    def every(self, seconds: float, job: Callable[[], Awaitable[None]], job_id: str) -> None:
        """Run `job` every `seconds`, from now until the scheduler stops."""
        assert self._scheduler is not None, "the scheduler is not started"
        self._scheduler.add_job(job, "interval", seconds=seconds, id=job_id, replace_existing=True)

    def cancel(self, job_id: str) -> None:
        if self.running and self._scheduler is not None and self._scheduler.get_job(job_id) is not None:
            self._scheduler.remove_job(job_id)


class Clock:
    """Wall-clock and monotonic time. Unit tests hand in one they move by hand."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
