"""Writing, once the fleet's Redis answers again, what this daemon rotated alone while it could not be reached,
over the record it held then: the others continue from it and never spend the refresh token it spent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from tokend.fleet.envelope import FleetKey, provider_secrets, seal
from tokend.fleet.spenders import Spenders
from tokend.fleet.store import Store, StoreError

log = logging.getLogger("tokend")

# A record holding a refresh token outlives its access token in Redis: the refresh token is what the next
# login spends, however long after (a fleet stopped over a weekend).
REFRESH_KEPT = 90 * 86400.0


class AfterOutage:
    """`held`: share key -> (token, record) this daemon holds, shared with its FleetLogins and updated here
    when a write lands; `trouble`: told of a Redis error."""

    def __init__(self, store: Store, spend: Spenders, key: FleetKey, held: dict[str, tuple[str, str]],
                 trouble: Callable[[StoreError], None]) -> None:
        self._store = store
        self._spend = spend
        self._key = key
        self._held = held
        self._trouble = trouble
        self._writing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Redis answers again: write what was rotated alone (one write at a time)."""
        for share, line in self._spend.lines():
            if line.unwritten is not None and not self._writing:
                task = asyncio.create_task(self._write(share), name="tokend-fleet-write")
                self._writing.add(task)
                task.add_done_callback(self._writing.discard)

    async def _write(self, share: str) -> None:
        line = self._spend.line(share)
        if line.unwritten is None:
            return
        credential, lineage, config = line.unwritten
        expected = self._held.get(share, ("", ""))[1]
        record = seal(credential, self._key, share, provider_secrets(config), lineage)
        keep = max(credential.expires_at or 0.0, time.time() + REFRESH_KEPT)
        try:
            written = await self._store.replace(share, record, keep, self._key.id, expected)
        except StoreError as exc:
            self._trouble(exc)
            return
        if line.unwritten is not None and line.unwritten[0] is credential:
            line.unwritten = None
        if written:
            self._held[share] = (credential.token, record)
            log.info("fleet_written_after_outage generation=%d", credential.generation)
        else:
            log.warning("fleet_write_after_outage_refused generation=%d reason=%s", credential.generation,
                        "another daemon replaced the fleet's record meanwhile")
