"""What a provider kind may add to the daemon beyond its logins: local routes, background work, and
something to do after a reload. The API and the daemon loop over the extensions; neither names a kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from tokend.redact import Redactor
from tokend.renewal.logins import Ledger, Login
from tokend.renewal.scheduler import Scheduler

if TYPE_CHECKING:
    from fastapi import APIRouter

    from tokend.renewal.manager import Manager

__all__ = ["DaemonParts", "Extension"]


@dataclass(frozen=True)
class DaemonParts:
    """What the daemon lends an extension."""

    manager: Manager
    scheduler: Scheduler
    client: httpx.AsyncClient  # the upstream client, for calls made with a provider's token
    redactor: Redactor
    direct_login: Login  # a login with the given settings, never shared through a fleet (a key pair's proof)
    fleet: bool = False  # logins are shared with other daemons (fleet mode)
    ledger: Ledger | None = None  # where the refresh tokens sent are noted (a new sign-in starts above them)


class Extension(Protocol):
    def router(self) -> APIRouter | None:
        """Routes under the same request checks as /token, for clients allowed to administer the provider."""
        ...

    async def start(self) -> None:
        """Start background work; the manager's first logins have started, the scheduler runs."""
        ...

    async def stop(self) -> None: ...

    def reloaded(self) -> None:
        """The config was reloaded: providers may have been added, changed or removed."""
        ...
