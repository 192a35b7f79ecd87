"""The local admin endpoints for Felloh API keys, behind the same request checks as /token.

    GET    /felloh/{name}/keys?organisation=ID         list the organisation's keys
    POST   /felloh/{name}/keys                         create one: {"organisation", "name"}
    DELETE /felloh/{name}/keys/{key_id}?organisation=ID  delete one (never a key a provider uses)
    POST   /felloh/{name}/rotate                       rotate the provider's key pair: {"organisation"}

`organisation` may be left out when the provider's config names one.

The daemon makes these calls with the token it holds, so the CLI needs no secret of its own.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tokend.errors import OperationRefused
from tokend.extensions import DaemonParts
from tokend.providers.felloh.keys import ApiKey, FellohKeys, felloh_config, key_in_use, other_users, rotate


class _Organisation(BaseModel):
    organisation: str | None = Field(default=None, min_length=1)


class _NewKey(_Organisation):
    name: str = Field(min_length=1)


def felloh_router(parts: DaemonParts) -> APIRouter:
    """The routes; the app adds its request checks and error answers when it includes them."""
    manager = parts.manager
    router = APIRouter(prefix="/felloh/{name}")
    # The ids of keys seen in list answers, by provider: how a delete knows which id is the key in use.
    seen: dict[str, dict[str, ApiKey]] = {}

    def organisation_of(name: str, given: str | None) -> str:
        organisation = given or felloh_config(manager, name).organisation
        if not organisation:
            raise OperationRefused(f"which organisation? Pass one, or set organisation in {name}'s config", status=400)
        return organisation

    async def listed(name: str, organisation: str | None) -> list[ApiKey]:
        keys, _ = await FellohKeys(parts, name).list(organisation_of(name, organisation))
        seen.setdefault(name, {}).update({key.id: key for key in keys})
        return keys

    @router.get("/keys")
    async def list_keys(name: str, organisation: str | None = None) -> dict[str, Any]:
        keys = await listed(name, organisation)
        return {"provider": name, "keys": [{**asdict(key), "in_use": key_in_use(manager, name, key)} for key in keys]}

    @router.post("/keys", status_code=201)
    async def create_key(name: str, body: _NewKey) -> dict[str, Any]:
        keys = FellohKeys(parts, name)
        new, request_id = await keys.create(organisation_of(name, body.organisation), body.name)
        return {"provider": name, "name": new.name, "public_key": new.public_key, "secret_key": new.secret_key,
                "request_id": request_id}

    @router.delete("/keys/{key_id}")
    async def delete_key(name: str, key_id: str, organisation: str | None = None) -> dict[str, Any]:
        if key_id not in seen.get(name, {}):
            await listed(name, organisation)
        key = seen.get(name, {}).get(key_id)
        if key is None:
            raise OperationRefused(f"no key {key_id} in the organisation's keys", status=404)
        if key_in_use(manager, name, key):
            raise OperationRefused(f"{key_id} is the key {name} logs in with; rotate it instead of deleting it")
        if sharing := other_users(manager, name, key):
            raise OperationRefused(f"{key_id} is the key {', '.join(sharing)} log in with; it cannot be deleted")
        request_id = await FellohKeys(parts, name).delete(key_id)
        seen[name].pop(key_id, None)
        return {"provider": name, "deleted": key_id, "request_id": request_id}

    @router.post("/rotate")
    async def rotate_key(name: str, body: _Organisation) -> dict[str, Any]:
        result = await rotate(parts, name, organisation_of(name, body.organisation))
        seen.pop(name, None)
        return result.as_dict()

    return router

