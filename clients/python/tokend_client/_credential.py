"""The credential tokend serves for one provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeGuard

__all__ = ["Credential"]


@dataclass(frozen=True, eq=False)
class Credential:
    """A token and exactly what to add to an upstream request to use it.

    >>> credential = Client().credential("felloh")
    >>> httpx.get("https://sandbox.felloh.com/agent/organisations",
    ...           headers=credential.headers, params=credential.query)

    `headers` and `query` come from tokend as they are (for Felloh `{"Authorization": "Bearer ..."}`, for
    a Flotiq key both `{"X-AUTH-TOKEN": key}` and `{"auth_token": key}`: add both, as the Auth classes do).
    `expires_at` is an aware UTC datetime, or None for a key that never expires. The token is left out of
    the repr, so that printing a credential in a log shows no secret.
    """

    provider: str
    token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    headers: Mapping[str, str] = field(repr=False)
    query: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_answer(cls, data: Any, provider: str) -> Credential:
        """Build one from tokend's JSON answer to GET /token/NAME; ValueError if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        token, token_type = data.get("token"), data.get("token_type")
        headers, query = data.get("headers"), data.get("query", {})
        if not isinstance(token, str) or not isinstance(token_type, str):
            raise ValueError("the answer has no token or token_type")
        if not _string_map(headers) or not _string_map(query):
            raise ValueError("the answer's headers or query is not an object of strings")
        expires_at = data.get("expires_at")
        return cls(
            provider=data["provider"] if isinstance(data.get("provider"), str) else provider,
            token=token,
            token_type=token_type,
            expires_at=None if expires_at is None else datetime.fromisoformat(str(expires_at)),
            headers=MappingProxyType(dict(headers)),
            query=MappingProxyType(dict(query)),
        )


def _string_map(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
