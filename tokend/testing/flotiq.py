"""A fake Flotiq: static keys checked on an API call, in a header or a query parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.testing.base import (
    FakeUpstream,
)


class FakeFlotiq(FakeUpstream):
    """Flotiq: static keys only, no login endpoint.

    The protected GET /api/v1/content/{type} takes a key as the X-AUTH-TOKEN header or ?auth_token=.
    With no login endpoint, `logins` and `login_attempts` stay 0, and fail() and hang() act on the
    protected endpoint instead. Keys never expire: valid_tokens() is the set of keys.
    """

    protected_path: ClassVar[str] = "/api/v1/content/blogposts"

    def __init__(self, *, api_keys: Iterable[str] = ("demo-flotiq-read-only-key",)) -> None:
        self.api_keys = set(api_keys)
        super().__init__(lifetime=math.inf)

    def valid_tokens(self) -> set[str]:
        return set(self.api_keys)

    def is_valid(self, token: str) -> bool:
        return token in self.api_keys

    def _routes(self) -> list[Route]:
        return [Route("/api/v1/content/{content_type}", self._content, methods=["GET"])]

    def _api_authorised(self, request: Request) -> bool:
        key = request.headers.get("x-auth-token") or request.query_params.get("auth_token")
        return key is not None and self.is_valid(key)

    async def _content(self, request: Request) -> Response:
        interfered = await self._interfere(request)
        if interfered is not None:
            return interfered
        key = request.headers.get("x-auth-token") or request.query_params.get("auth_token")
        if key is None or not self.is_valid(key):
            return self._error(401, "Unauthorized")
        return JSONResponse({"total_count": 0, "total_pages": 0, "current_page": 1, "count": 0, "data": []})
