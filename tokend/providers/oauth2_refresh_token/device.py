"""What user tokens add to the daemon: a sign-in run by the daemon, and a sign-out, behind the same request
checks as /token (and, with [clients], for clients allowed to administer the provider).

    POST /token/{name}/login    start the device authorization grant (RFC 8628), or answer the one under way
    GET  /token/{name}/login    how it is going: waiting, signed_in, expired, denied or failed
    POST /token/{name}/logout   revoke the refresh token (RFC 7009, at revocation_url) and forget the tokens

The daemon polls the token endpoint at the server's interval, five seconds slower after each slow_down,
until the user approves, refuses, or the code expires; `tokend login NAME` shows the code and watches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter

from tokend.credential import Credential, iso_utc
from tokend.errors import OperationRefused, SignInNeeded, TokendError, UpstreamError
from tokend.extensions import DaemonParts

if TYPE_CHECKING:
    from tokend.providers.oauth2_refresh_token.grant import DeviceStart, OAuth2RefreshToken, OAuth2RefreshTokenConfig

log = logging.getLogger("tokend")

SLOW_DOWN_STEP = 5.0  # RFC 8628 section 3.5: each slow_down adds five seconds to the interval

Phase = Literal["waiting", "signed_in", "expired", "denied", "failed"]


@dataclass
class _SignIn:
    name: str
    start: DeviceStart
    interval: float
    phase: Phase = "waiting"
    message: str = "waiting for the user to approve"
    polls: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        # Never the device_code: it is what the daemon polls with, a bearer secret until it expires.
        return {"provider": self.name, "state": self.phase, "message": self.message,
                "verification_uri": self.start.verification_uri,
                "verification_uri_complete": self.start.verification_uri_complete,
                "user_code": self.start.user_code, "expires_at": iso_utc(self.start.expires_at),
                "interval": self.interval, "polls": self.polls}


class DeviceLogins:
    def __init__(self, parts: DaemonParts) -> None:
        self._parts = parts
        self._sign_ins: dict[str, _SignIn] = {}
        self._starting: dict[str, asyncio.Lock] = {}  # one device authorization started at a time, per provider

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/token/{name}")

        @router.post("/login")
        async def start(name: str) -> dict[str, Any]:
            return (await self.begin(name)).view()

        @router.get("/login")
        async def progress(name: str) -> dict[str, Any]:
            sign_in = self._sign_ins.get(name)
            if sign_in is None:
                raise OperationRefused(f"no sign-in for {name} was started: POST /token/{name}/login", status=404)
            return sign_in.view()

        @router.post("/logout")
        async def logout(name: str) -> dict[str, Any]:
            return await self.logout(name)

        return router

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._end(list(self._sign_ins))

    def reloaded(self) -> None:
        pass

    # --- sign-in ---------------------------------------------------------------------------------------

    def _provider(self, name: str) -> tuple[OAuth2RefreshTokenConfig, OAuth2RefreshToken]:
        # Imported here: every daemon has these routes, and only a daemon with a user token needs its login.
        from tokend.providers.oauth2_refresh_token.grant import OAuth2RefreshToken, OAuth2RefreshTokenConfig

        config = self._parts.manager.provider_config(name)  # UnknownProvider: 404
        if not isinstance(config, OAuth2RefreshTokenConfig):
            raise OperationRefused(f"{name} is a {config.kind} provider: only oauth2_refresh_token providers "
                                   "sign a user in", status=400)
        return config, OAuth2RefreshToken(name, config, self._parts.redactor)

    async def begin(self, name: str) -> _SignIn:
        config, provider = self._provider(name)
        if config.device_authorization_url is None:
            raise OperationRefused(f"{name} has no device_authorization_url, so it cannot sign in through "
                                   "tokend; put a refresh_token in its config instead", status=400)
        async with self._starting.setdefault(name, asyncio.Lock()):
            running = self._sign_ins.get(name)
            if running is not None and running.phase == "waiting" and time.time() < running.start.expires_at:
                return running  # one sign-in at a time: a second `tokend login` joins the first (one poller)
            started = await provider.start_device(self._parts.client)
            await self._end([name])  # one that ended (expired, denied) leaves no poller behind
            sign_in = self._sign_ins[name] = _SignIn(name, started, started.interval)
            sign_in.task = asyncio.create_task(self._poll(sign_in, config, provider), name=f"tokend-sign-in-{name}")
        log.info("sign-in provider=%s started: user code %s at %s, expires_at=%s", name, started.user_code,
                 started.verification_uri, iso_utc(started.expires_at))
        return sign_in

    async def _poll(self, sign_in: _SignIn, config: OAuth2RefreshTokenConfig, provider: OAuth2RefreshToken) -> None:
        try:
            await self._polled(sign_in, config, provider)
        except TokendError as exc:
            sign_in.phase, sign_in.message = "failed", exc.message
        except Exception as exc:  # a bug ends as a failed sign-in that says so, not as a silent task
            log.exception("sign-in provider=%s failed", sign_in.name)
            sign_in.phase, sign_in.message = "failed", f"unexpected {type(exc).__name__}"
        if sign_in.phase != "signed_in":
            log.warning("sign-in provider=%s %s: %s", sign_in.name, sign_in.phase, sign_in.message)

    async def _polled(self, sign_in: _SignIn, config: OAuth2RefreshTokenConfig, provider: OAuth2RefreshToken) -> None:
        name, client = sign_in.name, self._parts.client
        while True:
            left = sign_in.start.expires_at - time.time()
            if left <= 0:
                sign_in.phase, sign_in.message = "expired", (
                    f"the code expired before the user approved it; run `tokend login {name}` again")
                return
            await asyncio.sleep(min(sign_in.interval, left))
            sign_in.polls += 1
            try:
                answer = await provider.poll_device(client, sign_in.start.device_code)
            except UpstreamError as exc:
                if exc.retryable:  # a blip upstream: the code is still good, keep asking
                    sign_in.message = f"waiting for the user to approve (the last poll failed: {exc.message})"
                    continue
                raise
            if answer.credential is not None:
                await self._parts.manager.switch_provider(name, config, self._next_generation(name, answer.credential))
                sign_in.phase, sign_in.message = "signed_in", f"{name} is signed in"
                log.info("sign-in provider=%s signed in", name)
                return
            match answer.error:
                case "authorization_pending":
                    continue
                case "slow_down":
                    sign_in.interval += SLOW_DOWN_STEP
                case "expired_token":
                    sign_in.phase, sign_in.message = "expired", (
                        f"the code expired before the user approved it; run `tokend login {name}` again")
                    return
                case "access_denied":
                    sign_in.phase, sign_in.message = "denied", "the user refused the sign-in"
                    return
                case _:
                    sign_in.phase, sign_in.message = "failed", (
                        f"the authorization server answered {answer.error}: {answer.description}")
                    return

    # --- sign-out --------------------------------------------------------------------------------------

    def _next_generation(self, name: str, credential: Credential) -> Credential:
        """A new sign-in starts a new line of refresh tokens above every generation held or noted spent, so
        that no record of the lines before it can ever count as newer."""
        held = self._parts.manager.held_generation(name)
        ledger = self._parts.ledger
        above = max(held, 0 if ledger is None else ledger.highest(name)) + 1
        return dataclasses.replace(credential, generation=max(credential.generation, above))

    async def _end(self, names: list[str]) -> None:
        """End the pending sign-ins of `names`: their pollers stop, and an approval after this signs no one in."""
        ended = [sign_in for name in names if (sign_in := self._sign_ins.pop(name, None)) is not None]
        tasks = [sign_in.task for sign_in in ended if sign_in.task is not None and not sign_in.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def logout(self, name: str) -> dict[str, Any]:
        config, provider = self._provider(name)
        manager = self._parts.manager
        async with self._starting.setdefault(name, asyncio.Lock()):
            await self._end([name])
        async with manager.changing(name):
            # The login in flight first: it may be spending the refresh token now, and its answer holds the
            # newest one, the one to revoke.
            revoked = False
            while (held := await manager.quiesce(name)) is not None and config.revocation_url is not None:
                await provider.revoke(self._parts.client, held)
                revoked = True
                if manager.held_refresh_token(name) == held:
                    break
            command = config.sign_in.format(name=name)
            await manager.forget(name, SignInNeeded(name, f"{name} was signed out; to sign in again: {command}",
                                                    command=command, reason="signed_out"))
        return {"provider": name, "revoked": revoked,
                "message": f"{name} signed out" + (" and its refresh token revoked" if revoked else "")}
