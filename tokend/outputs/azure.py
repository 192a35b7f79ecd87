"""[metadata.azure]: Azure's managed identity endpoint, as App Service serves it (api-version 2019-08-01).

    [metadata.azure]
    listen = "127.0.0.1:8770"
    resources = { "https://vault.azure.net" = "vault", "https://management.azure.com" = "arm" }

azure-identity's ManagedIdentityCredential (and every Azure SDK through DefaultAzureCredential) reads
IDENTITY_ENDPOINT and IDENTITY_HEADER, which `tokend exec` sets, and asks
`GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=R` with `X-IDENTITY-HEADER: <that secret>`.
The answer is the token of the provider that `resources` maps R to (an oauth2_client_credentials
provider whose scope is R's `/.default`, typically), in App Service's shape.
The secret is made anew by every daemon run, and only the callers that may read all of those providers
are told it; the listener checks it (in constant time) before anything else is looked up.
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from tokend.errors import TokendError
from tokend.outputs.config import AzureConfig, resource_key
from tokend.outputs.json_answer import send_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.renewal.manager import Manager

__all__ = ["PATH", "AzureIdentityEndpoint"]

PATH = "/msi/token"
API_VERSION = "2019-08-01"
# A key that never expires still needs an expires_on: asked again after this long.
_NO_EXPIRY_LIFETIME = 3600


class AzureIdentityEndpoint:
    """The ASGI app on the listener; the request checks every listener has are made before it is called."""

    def __init__(self, manager: Manager, secret: str) -> None:
        self._manager = manager
        self._secret = secret.encode()

    def _config(self) -> AzureConfig:
        config = self._manager.settings.metadata.azure
        assert config is not None  # the listener exists only with [metadata.azure]
        return config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, *await self._answer(scope))

    async def _answer(self, scope: Scope) -> tuple[int, dict[str, Any]]:
        presented = dict(scope["headers"]).get(b"x-identity-header", b"")
        if not hmac.compare_digest(presented, self._secret):
            return _error(401, "The X-IDENTITY-HEADER header is missing or not this endpoint's (IDENTITY_HEADER).")
        if scope["method"] != "GET" or scope["path"] != PATH:
            return _error(404, f"Only GET {PATH} is served here.")
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if query.get("api-version") != API_VERSION:
            return _error(400, f"api-version must be {API_VERSION} (the App Service protocol).")
        resource = query.get("resource", "")
        provider = self._config().resources.get(resource_key(resource))
        if provider is None:
            return _error(400, f"No provider serves resource {resource[:200]!r}; [metadata.azure] resources "
                          "names those served.")
        try:
            credential = await self._manager.get(provider)
        except TokendError as exc:
            return _error(503, exc.message)
        expires = credential.expires_at or time.time() + _NO_EXPIRY_LIFETIME
        # expires_on as a string of Unix seconds, as App Service sends it; azure-identity takes either.
        return 200, {"access_token": credential.token, "expires_on": str(int(expires)), "resource": resource,
                     "token_type": credential.token_type}


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"statusCode": status, "message": message}
