"""[metadata.gce]: Google's metadata server, as far as Google's client libraries ask it for credentials.

    [metadata.gce]
    listen = "127.0.0.1:8771"
    provider = "gcp"              # a Google provider naming a service account (a key, impersonation,
                                  # workload identity with service_account)
    project_id = "my-project"

google-auth (and every Google client library) asks the host in GCE_METADATA_HOST, and probes the one in
GCE_METADATA_IP first; `tokend exec` sets both. Served, each answer with `Metadata-Flavor: Google`:

    /                                                      the probe
    /computeMetadata/v1/project/project-id                 project_id (404 when not set)
    /computeMetadata/v1/universe/universe-domain           404: the default universe, googleapis.com
    /computeMetadata/v1/instance/service-accounts/         default/ and the account's email
      .../{default|EMAIL}/?recursive=true                  {"email", "scopes", "aliases"}
      .../{default|EMAIL}/email, .../scopes                plain text
      .../{default|EMAIL}/token[?scopes=a,b]               {"access_token", "expires_in", "token_type"}
      .../{default|EMAIL}/identity?audience=A[&format=full]  an ID token for A, as plain text

The token for the provider's own scopes is the one the daemon holds and renews; one for other scopes, or
an ID token for an audience, is minted by the provider on demand and kept until a third of its life is
left (client libraries ask again well before expiry, many processes at once). A mint that failed is kept
too, with a backoff that doubles: until it has passed, that audience or scope set is answered with the
failure, without another login; and it counts toward MAX_MINTED as a token held does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from tokend.credential import Credential
from tokend.errors import TokendError
from tokend.outputs.config import GceConfig

if TYPE_CHECKING:
    import httpx

    from tokend.providers.base import Tokens
    from tokend.redact import Redactor
    from tokend.renewal.manager import Manager

__all__ = ["MAX_MINTED", "GoogleAccount", "GoogleMetadataServer"]

_ROOT = "/computeMetadata/v1/"
MAX_MINTED = 64  # audiences and scope sets held at once (tokens or failures), beside the provider's own token
# After a failed mint, no new one for that audience or scope set for this long, doubled at each failure in a row.
FAILED_MINT_BACKOFF = 5.0
FAILED_MINT_BACKOFF_MAX = 300.0
_ACCOUNTS = f"{_ROOT}instance/service-accounts/"


@runtime_checkable
class GoogleAccount(Protocol):
    """What the metadata server asks of a Google provider besides its own token."""

    @property
    def client_email(self) -> str: ...

    @property
    def scopes(self) -> tuple[str, ...]: ...

    async def mint(self, client: httpx.AsyncClient, *, scopes: Sequence[str] | None = None,
                   audience: str | None = None, tokens: Tokens | None = None) -> Credential: ...


class GoogleMetadataServer:
    """The ASGI app on the listener; the request checks every listener has are made before it is called."""

    def __init__(self, manager: Manager, client: httpx.AsyncClient, redactor: Redactor) -> None:
        self._manager, self._client, self._redactor = manager, client, redactor
        self._account: tuple[object, GoogleAccount] | None = None  # built per provider config: a reload replaces it
        self._minted: dict[tuple[str, ...], Credential] = {}
        self._minting: dict[tuple[str, ...], asyncio.Lock] = {}
        self._failed: dict[tuple[str, ...], _Failure] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, kind = await self._answer(scope)
        except TokendError as exc:
            status, body, kind = 503, exc.message + "\n", b"text/plain; charset=utf-8"
        data = body.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"metadata-flavor", b"Google"), (b"content-type", kind), (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": data})

    async def _answer(self, scope: Scope) -> tuple[int, str, bytes]:
        # The server has decoded the path once already: decoding it again would make `%252F` a `/`.
        path, query = scope["path"], dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if scope["method"] != "GET":
            return _text(405, "Only GET is served here.\n")
        if path == "/":
            return _text(200, "computeMetadata/\n")
        config = self._config()
        if path == f"{_ROOT}project/project-id":
            return _text(200, config.project_id) if config.project_id else _text(404, "Not found\n")
        account = self._google_account()
        if path == _ACCOUNTS:
            return _text(200, f"default/\n{account.client_email}/\n")
        if not path.startswith(_ACCOUNTS):
            return _text(404, "Not found\n")
        who, _, what = path.removeprefix(_ACCOUNTS).partition("/")
        if who not in ("default", account.client_email):
            return _text(404, "Not found\n")
        return await self._account_answer(account, what, query)

    async def _account_answer(self, account: GoogleAccount, what: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        if what == "" and query.get("recursive") == "true":
            return _json({"aliases": ["default"], "email": account.client_email, "scopes": list(account.scopes)})
        if what == "":
            return _text(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
        if what == "email":
            return _text(200, account.client_email)
        if what == "aliases":
            return _text(200, "default\n")
        if what == "scopes":
            return _text(200, "".join(f"{scope}\n" for scope in account.scopes))
        if what == "token":
            scopes = tuple(s for s in query.get("scopes", "").replace(" ", ",").split(",") if s)
            credential = await self._access_token(account, scopes)
            expires_in = max(0, int((credential.expires_at or time.time() + 3600) - time.time()))
            return _json({"access_token": credential.token, "expires_in": expires_in, "token_type": "Bearer"})
        if what == "identity":
            audience = query.get("audience")
            if not audience:
                return _text(400, "non-empty audience parameter required\n")
            return _text(200, (await self._minted_token(account, ("audience", audience))).token)
        return _text(404, "Not found\n")

    async def _access_token(self, account: GoogleAccount, scopes: tuple[str, ...]) -> Credential:
        """The daemon's own token for the provider's scopes; one minted for others."""
        config = self._manager.provider_config(self._config().provider)
        if getattr(config, "target_audience", None) is None and (not scopes or set(scopes) == set(account.scopes)):
            return await self._manager.get(self._config().provider)
        return await self._minted_token(account, ("scopes", *sorted(scopes or account.scopes)))

    async def _minted_token(self, account: GoogleAccount, key: tuple[str, ...]) -> Credential:
        if key not in self._minting and len(self._minting) >= MAX_MINTED:
            self._forget_expired()
            if len(self._minting) >= MAX_MINTED:
                # Each new audience or scope set is a login to Google: a local process asking for endless
                # new ones must not turn tokend into a flood of logins, nor grow its memory without end.
                raise TokendError(f"tokend already holds tokens for {MAX_MINTED} other audiences and scope sets; "
                                  "ask again once some have expired")
        async with self._minting.setdefault(key, asyncio.Lock()):  # many processes asking at once: one login
            now = time.time()
            held = self._minted.get(key)
            if (held is not None and held.expires_at is not None
                    and held.expires_at - now > (held.expires_at - held.obtained_at) / 3):
                return held
            failed = self._failed.get(key)
            if failed is not None and now < failed.until:  # asked again, or waiting while it failed: no login
                raise TokendError(failed.message)
            try:
                if key[0] == "audience":
                    credential = await account.mint(self._client, audience=key[1], tokens=self._manager)
                else:
                    credential = await account.mint(self._client, scopes=list(key[1:]), tokens=self._manager)
            except TokendError as exc:
                self._failed[key] = _Failure.after(failed, exc.message, time.time())
                raise
            self._failed.pop(key, None)
            self._minted[key] = credential
            return credential

    def _forget_expired(self) -> None:
        now = time.time()
        for key, lock in list(self._minting.items()):
            held = self._minted.get(key)
            failed = self._failed.get(key)
            backing_off = failed is not None and now < failed.until
            if lock.locked() or (held is not None and held.is_fresh(now)) or backing_off:
                continue  # in use, held, or a failure still backing off
            self._minted.pop(key, None)
            self._failed.pop(key, None)
            del self._minting[key]

    def _config(self) -> GceConfig:
        config = self._manager.settings.metadata.gce
        assert config is not None  # the listener exists only with [metadata.gce]
        return config

    def _google_account(self) -> GoogleAccount:
        from tokend.providers import build_provider

        config = self._manager.provider_config(self._config().provider)
        if self._account is None or self._account[0] is not config:
            provider = build_provider(self._config().provider, config, self._redactor)
            if not isinstance(provider, GoogleAccount):
                raise TokendError(f"provider {self._config().provider} is not a Google service account")
            self._account = config, provider
            self._minted.clear()
            self._minting.clear()
            self._failed.clear()
        return self._account[1]


@dataclass(frozen=True)
class _Failure:
    """A failed mint: its error's message, answered again until `until`, and how many failed in a row."""

    message: str
    until: float
    count: int

    @classmethod
    def after(cls, last: _Failure | None, message: str, now: float) -> _Failure:
        count = 1 if last is None else last.count + 1
        return cls(message, now + min(FAILED_MINT_BACKOFF_MAX, FAILED_MINT_BACKOFF * 2 ** (count - 1)), count)


def _text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, body, b"application/text"


def _json(body: dict[str, Any]) -> tuple[int, str, bytes]:
    return 200, json.dumps(body), b"application/json"
