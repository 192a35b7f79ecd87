"""The JSON answer the Azure and AWS metadata endpoints send: whole, with its length, never stored."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

__all__ = ["send_json"]


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": data})
