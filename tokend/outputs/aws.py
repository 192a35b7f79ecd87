"""[metadata.aws]: the container credentials endpoint that every AWS SDK asks when
AWS_CONTAINER_CREDENTIALS_FULL_URI is set (as ECS and EKS Pod Identity serve it).

    [metadata.aws]
    listen = "127.0.0.1:8771"
    provider = "aws"                       # answered at GET /; GET /NAME answers any AWS provider
    # authorization_token = { file = "/run/secrets/aws-endpoint-token" }   # default: a new one every run

`GET /` or `GET /NAME` with `Authorization: <token>` answers `{"AccessKeyId", "SecretAccessKey", "Token",
"Expiration", "AccountId"}`. `tokend exec` sets AWS_CONTAINER_CREDENTIALS_FULL_URI and writes the token to
the 0600 file that AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE names; the SDKs send it, and the listener checks
it (in constant time) before anything else is looked up. Only a caller that may read the provider is told
the token.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from tokend.credential import iso_utc
from tokend.errors import TokendError
from tokend.outputs.config import AwsKeysConfig
from tokend.outputs.json_answer import send_json

if TYPE_CHECKING:
    from tokend.renewal.manager import Manager

__all__ = ["ContainerCredentials", "default_provider"]


class ContainerCredentials:
    """The ASGI app on the listener; the request checks every listener has are made before it is called."""

    def __init__(self, manager: Manager, token: str) -> None:
        self._manager = manager
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, *await self._answer(scope))

    async def _answer(self, scope: Scope) -> tuple[int, dict[str, Any]]:
        presented = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(presented, self._token):
            return _error(401, "The Authorization header is missing or not this endpoint's token "
                          "(AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE).")
        if scope["method"] != "GET":
            return _error(405, "Only GET is served here.")
        name = scope["path"].strip("/") or default_provider(self._manager.settings)
        if name is None:
            return _error(404, "No default provider: ask for GET /NAME, or set [metadata.aws] provider.")
        config = self._manager.settings.providers.get(name)
        if not isinstance(config, AwsKeysConfig):
            return _error(404, f"No AWS provider is named {name[:100]!r}.")
        try:
            credential = await self._manager.get(name)
        except TokendError as exc:
            return _error(503, exc.message)
        if credential.aws is None:
            return _error(503, f"Provider {name!r} holds no AWS credential.")
        answer = {"AccessKeyId": credential.aws.access_key_id, "SecretAccessKey": credential.aws.secret_access_key,
                  "Token": credential.token, "Expiration": iso_utc(credential.expires_at)}
        if credential.aws.account_id:
            answer["AccountId"] = credential.aws.account_id
        return 200, answer


def default_provider(settings: Any) -> str | None:
    """The provider GET / answers: [metadata.aws] provider, else the config's one AWS provider, else None."""
    config = settings.metadata.aws
    if config is not None and config.provider is not None:
        return str(config.provider)
    found = [name for name, provider in settings.providers.items() if isinstance(provider, AwsKeysConfig)]
    return found[0] if len(found) == 1 else None


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": status, "message": message}
