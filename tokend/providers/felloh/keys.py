"""Felloh API key management and rotation, done by the daemon with the token it already holds.

The key endpoints follow the document's "HTTP Method" lines: list is `POST /token/keys`, create is
`PUT /token/key`, delete is `DELETE /token/key/<id>`; every error carries Felloh's meta.request_id.

Rotation creates a key, proves it can log in, writes it to the provider's secret files atomically,
switches the provider to it, and only then deletes the old key. Until that last step the old key keeps
working; a failure at any step before it leaves the provider exactly as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tokend.config.secret_files import write_secret_file
from tokend.config.secrets import SecretValue
from tokend.credential import iso_utc
from tokend.errors import OperationRefused, UpstreamError
from tokend.extensions import DaemonParts
from tokend.fleet.config import FLEET_ROTATION_REFUSED
from tokend.providers.exchange import LoginRequest, exchange, limits
from tokend.providers.felloh.login import JSON_HEADERS, FellohConfig, describe
from tokend.renewal.logins import LoginCall, LoginReason
from tokend.renewal.manager import Manager

log = logging.getLogger("tokend")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    public_key: str
    secret_key_last_four: str
    created_at: str
    user_id: str

    @classmethod
    def parse(cls, raw: Any) -> ApiKey:
        raw = raw if isinstance(raw, dict) else {}
        user = raw["user"] if isinstance(raw.get("user"), dict) else {}

        def text(source: dict[str, Any], key: str) -> str:
            return str(source.get(key) or "")

        return cls(text(raw, "id"), text(raw, "name"), text(raw, "public_key"), text(raw, "secret_key_last_four"),
                   text(raw, "created_at"), text(user, "id"))


@dataclass(frozen=True)
class NewKey:
    name: str
    public_key: str
    secret_key: str = field(repr=False)


@dataclass
class RotationResult:
    provider: str
    new_key_id: str
    new_public_key: str
    old_key_id: str
    old_key_deleted: bool
    warning: str | None = None
    request_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FellohKeys:
    """Felloh's three key endpoints, called with a bearer token the daemon already holds."""

    def __init__(self, parts: DaemonParts, provider: str) -> None:
        self._manager = parts.manager
        self._provider = provider
        self._config = felloh_config(parts.manager, provider)
        self._client = parts.client

    async def list(self, organisation: str) -> tuple[list[ApiKey], str | None]:
        body, request_id = await self._call("list keys", "POST", "/token/keys", {"organisation": organisation})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(self._provider, "list keys answered without a data list", request_id=request_id)
        return [ApiKey.parse(item) for item in data], request_id

    async def create(self, organisation: str, name: str) -> tuple[NewKey, str | None]:
        body, request_id = await self._call(
            "create key", "PUT", "/token/key", {"organisation": organisation, "name": name}
        )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("public_key", "secret_key")):
            raise UpstreamError(self._provider, "create key answered without public_key and secret_key",
                                request_id=request_id)
        return NewKey(str(data.get("name") or name), data["public_key"], data["secret_key"]), request_id

    async def delete(self, key_id: str) -> str | None:
        _, request_id = await self._call("delete key", "DELETE", f"/token/key/{key_id}", None)
        return request_id

    async def _call(self, action: str, method: str, path: str, body: Any) -> tuple[Any, str | None]:
        credential = await self._manager.get(self._provider)
        return await exchange(self._client, LoginRequest(
            provider=self._provider, method=method, url=self._config.url + path,
            headers={**JSON_HEADERS, "Authorization": f"Bearer {credential.token}"}, json=body,
            **limits(self._config), redactor=self._manager.redactor, describe=describe, action=action,
        ))


def felloh_config(manager: Manager, provider: str) -> FellohConfig:
    config = manager.provider_config(provider)
    if not isinstance(config, FellohConfig):
        raise OperationRefused(f"{provider} is a {config.kind} provider; key management is for Felloh", status=400)
    return config


def key_in_use(manager: Manager, provider: str, key: ApiKey) -> bool:
    return key.public_key == felloh_config(manager, provider).public_key.get()


def other_users(manager: Manager, provider: str, key: ApiKey) -> list[str]:
    """The other configured Felloh providers that log in with `key` (deleting it would break them)."""
    return [
        name for name in manager.names
        if name != provider and isinstance(config := manager.provider_config(name), FellohConfig)
        and config.public_key.get() == key.public_key
    ]


async def rotate(parts: DaemonParts, provider: str, organisation: str) -> RotationResult:
    """Replace the provider's key pair with a new one. See the module docstring for the guarantees."""
    if parts.fleet and felloh_config(parts.manager, provider).fleet:
        raise OperationRefused(FLEET_ROTATION_REFUSED)
    async with parts.manager.changing(provider):  # a scheduled and a manual rotation must not interleave
        return await _rotate(parts, provider, organisation)


async def _rotate(parts: DaemonParts, provider: str, organisation: str) -> RotationResult:
    manager = parts.manager
    config = felloh_config(manager, provider)
    public_path, private_path = _rotatable_files(provider, config)
    keys = FellohKeys(parts, provider)
    listed, list_id = await keys.list(organisation)
    old = next((key for key in listed if key_in_use(manager, provider, key)), None)
    if old is None:
        raise OperationRefused(f"the key {provider} logs in with is not among organisation {organisation}'s keys")
    new, create_id = await keys.create(organisation, f"tokend {provider} {iso_utc(time.time())}")
    request_ids = [i for i in (list_id, create_id) if i]
    new_config = config.model_copy(update={
        "public_key": SecretValue(SecretStr(new.public_key), f"file {public_path}", public_path),
        "private_key": SecretValue(SecretStr(new.secret_key), f"file {private_path}", private_path),
    })
    try:
        # The new pair proves itself with a login of its own, never one shared through a fleet.
        credential = await parts.direct_login(LoginCall(provider, new_config, LoginReason.FORCED))
        _write_pair(config, new)
    except (UpstreamError, OSError) as exc:
        await _discard(keys, organisation, new)
        reason = exc.message if isinstance(exc, UpstreamError) else f"cannot write the secret files ({exc})"
        raise OperationRefused(f"rotation of {provider} stopped, the old key is still in use: {reason}",
                            status=502) from None
    await manager.switch_provider(provider, new_config, credential)
    result = RotationResult(provider, "", new.public_key, old.id, old_key_deleted=False, request_ids=request_ids)
    await _retire_old_key(manager, keys, organisation, old, new, result)
    log.info("rotation provider=%s new_key=%s old_key=%s old_key_deleted=%s", provider, result.new_key_id or "-",
             old.id, result.old_key_deleted)
    return result


async def _retire_old_key(
    manager: Manager, keys: FellohKeys, organisation: str, old: ApiKey, new: NewKey, result: RotationResult
) -> None:
    """After the switch: learn the new key's id, then delete the old key unless another provider uses it.

    The rotation has succeeded by now, so a failure here is a warning in the result, never an error.
    """
    try:
        listed, _ = await keys.list(organisation)
        result.new_key_id = next((key.id for key in listed if key.public_key == new.public_key), "")
        if sharing := other_users(manager, result.provider, old):
            result.warning = f"the new key is in use; the old key {old.id} is kept, since {', '.join(sharing)} use it"
            return
        result.request_ids += [i for i in [await keys.delete(old.id)] if i]
        result.old_key_deleted = True
    except UpstreamError as exc:
        result.warning = f"the new key is in use, but the old key {old.id} could not be deleted: {exc.message}"


def _rotatable_files(provider: str, config: FellohConfig) -> tuple[Path, Path]:
    public, private = config.public_key.path, config.private_key.path
    if public is None or private is None:
        raise OperationRefused(
            f"{provider}'s public_key and private_key must both be {{ file = ... }} references for tokend to "
            f"write a new pair (they are {config.public_key.source} and {config.private_key.source})", status=400)
    return public, private


def _write_pair(old: FellohConfig, new: NewKey) -> None:
    assert old.public_key.path is not None and old.private_key.path is not None
    write_secret_file(old.public_key.path, new.public_key)
    try:
        write_secret_file(old.private_key.path, new.secret_key)
    except OSError:
        write_secret_file(old.public_key.path, old.public_key.get())  # never leave a mismatched pair
        raise


async def _discard(keys: FellohKeys, organisation: str, new: NewKey) -> None:
    """Delete a key created by a rotation that did not complete, so that no unused live key remains."""
    try:
        listed, _ = await keys.list(organisation)
        for key in listed:
            if key.public_key == new.public_key:
                await keys.delete(key.id)
    except UpstreamError as exc:
        log.warning("rotation_cleanup_failed key=%r error=%s", new.name, exc.message)
