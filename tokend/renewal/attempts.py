"""One login attempt, as the manager makes it: through the daemon's one Login, with an answer no client could
use and a provider's own bug turned into an UpstreamError; and, after a refused login, the provider's secrets
read again where they are kept."""

from __future__ import annotations

import asyncio
import logging

from tokend.config.secrets import reread_secrets
from tokend.credential import Credential, unservable
from tokend.errors import UpstreamError
from tokend.providers import ProviderConfig
from tokend.redact import Redactor
from tokend.renewal.logins import Login, LoginCall
from tokend.renewal.slots import Slot

__all__ = ["Attempts"]

log = logging.getLogger("tokend")


class Attempts:
    def __init__(self, login: Login, redactor: Redactor) -> None:
        self._login_call = login
        self.redactor = redactor

    async def attempt(self, call: LoginCall) -> Credential | UpstreamError:
        """One login through the daemon's Login: its credential, or the UpstreamError it ended in (a provider's
        bug included: it must never stop the renewals of this or other providers)."""
        try:
            credential = await self._login_call(call)
            if (reason := unservable(credential)) is not None:
                return UpstreamError(call.name, f"login answered a token no client could use: {reason}")
            return credential
        except UpstreamError as exc:
            return exc
        except Exception as exc:  # a provider bug must never stop the renewals of this or other providers
            log.exception("login provider=%s outcome=bug", call.name)
            return UpstreamError(call.name, f"unexpected {type(exc).__name__} during login")

    async def reread_refused(self, slot: Slot) -> ProviderConfig | None:
        """After a refused login: the provider's settings with its secrets read anew (files, commands run again,
        the keyring), if that changed them, now in use. A password changed where it is kept (a password manager,
        the keyring) is then tried at once, not after the slow retry of refused credentials; once per change."""
        config = slot.config
        if not any(secret.path or secret.again for secret in config.secrets().values()):
            return None
        try:
            fresh = await asyncio.to_thread(reread_secrets, config)
        except ValueError as exc:
            log.warning("secrets_unreadable provider=%s after=rejected_login error=%s", slot.name,
                        self.redactor.scrub(str(exc)))
            return None
        if fresh == config or slot.retired or slot.config is not config:
            return None
        log.info("secrets_changed provider=%s after=rejected_login next=login", slot.name)
        self.redactor.add_secrets(secret.get() for secret in fresh.secrets().values())
        slot.config = fresh
        return fresh
