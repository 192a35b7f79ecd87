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
from tokend.errors import TokendError
from tokend.outputs import asking

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.api.client import Client

__all__ = ["NOT_FOUND", "get", "listing", "server_url"]

NOT_FOUND = "credentials not found in native keychain"  # what Docker matches to mean "none stored"


def server_url(data: bytes) -> str:
    """The registry Docker asks about, from its request: one line (its line feed taken off), with no control
    character (Python's `str.strip()` would take some off as white space, Docker writes none), refused
    whole otherwise. A plain `http://` registry is refused as the git helper refuses a plain http remote."""
    text = asking.checked_text(asking.decoded(data, "Docker's request").removesuffix("\n"), "Docker's request")
    scheme, separator, rest = text.strip(" ").partition("://")
    if separator and (refusal := asking.plain_http_refusal(scheme, rest.partition("/")[0])) is not None:
        raise TokendError(refusal)
    return text


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
