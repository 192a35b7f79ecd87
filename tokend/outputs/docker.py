"""`docker-credential-tokend get|list|store|erase`: Docker's credential helper protocol.

    ~/.docker/config.json: {"credHelpers": {"ghcr.io": "tokend"}}

Docker runs the program with the operation as its only argument and the registry's server URL on
stdin, and reads `{"ServerURL", "Username", "Secret"}` back. A registry no provider serves is answered
with Docker's own words for it, "credentials not found in native keychain", and exit status 1; Docker
then goes on without credentials. `store` and `erase` (docker login, docker logout) have nothing to do:
the tokens are the daemon's to renew.
"""

from __future__ import annotations

from tokend.config.tool_names import registry_key
from tokend.outputs import asking

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.api.client import Client

__all__ = ["NOT_FOUND", "get", "listing"]

NOT_FOUND = "credentials not found in native keychain"  # what Docker matches to mean "none stored"


def get(client: Client, server_url: str) -> dict[str, str] | None:
    """Docker's credential for the registry, or None when no provider serves it."""
    key = registry_key(server_url)
    for name, state in asking.providers(client).items():
        docker = state.get("docker") or {}
        if key and key in docker.get("registries", ()):
            answer = asking.token(client, name)
            return {"ServerURL": server_url.strip(), "Username": docker["username"], "Secret": answer["token"]}
    return None


def listing(client: Client) -> dict[str, str]:
    """Every registry served, with its user name (what `list` answers: never a secret)."""
    return {registry: docker["username"] for state in asking.providers(client).values()
            if (docker := state.get("docker")) for registry in docker.get("registries", ())}
