"""tokend_client: API tokens from tokend, the local credential daemon, for Python programs.

    from tokend_client import Client

    credential = Client().credential("felloh")
    headers = credential.headers          # {"Authorization": "Bearer ..."}

With httpx or requests, let an Auth class add the token and deal with a 401:

    import httpx
    from tokend_client.httpx import Auth

    httpx.get("https://sandbox.felloh.com/agent/organisations", auth=Auth("felloh"))

Standard library only; `tokend_client.httpx` and `tokend_client.requests` need the extras of those names.
"""

from __future__ import annotations

from tokend_client._client import Client, __version__
from tokend_client._credential import Credential
from tokend_client._errors import (
    DaemonUnreachable,
    Forbidden,
    RefreshFailed,
    RefreshThrottled,
    TokendError,
    TokenUnavailable,
    Unauthorized,
    UnknownProvider,
)

__all__ = [
    "Client",
    "Credential",
    "DaemonUnreachable",
    "Forbidden",
    "RefreshFailed",
    "RefreshThrottled",
    "TokenUnavailable",
    "TokendError",
    "Unauthorized",
    "UnknownProvider",
    "__version__",
]
