"""What the credential helpers (git, Docker, kubectl) ask the daemon, through the client `tokend get` uses.

Which provider answers a host or a registry is the daemon's to say (its /status shows each provider's
git and Docker settings to the callers that may read it): the config file may be the daemon's alone to
read, and environment overrides apply there only.
"""

from __future__ import annotations

from urllib.parse import quote

from tokend.errors import TokendError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tokend.api.client import Client

__all__ = ["providers", "reject", "token"]


def providers(client: Client) -> dict[str, Any]:
    """Every provider the caller may read, as /status shows it."""
    found: dict[str, Any] = _json(client, "GET", "/status")["providers"]
    return found


def token(client: Client, name: str) -> dict[str, Any]:
    """The provider's token as GET /token/NAME answers it."""
    answer: dict[str, Any] = _json(client, "GET", f"/token/{quote(name, safe='')}")
    return answer


def reject(client: Client, name: str, refused: str) -> dict[str, Any]:
    """Tell the daemon the upstream refused `refused`: it logs in again if that is still its token."""
    answer: dict[str, Any] = _json(client, "POST", f"/token/{quote(name, safe='')}/refresh", {"rejected": refused})
    return answer


def _json(client: Client, method: str, path: str, body: Any = None) -> Any:
    reply = client.request(method, path, body)
    if reply.status != 200:
        raise TokendError(reply.error_message())
    return reply.json()
