"""`tokend git-credential [--provider NAME] get|store|erase`: git's credential helper protocol.

    git config --global credential.https://github.com.helper tokend    # git runs git-credential-tokend

git writes `key=value` lines (protocol, host, path, and for erase the refused username and password)
and reads the same back. `get` answers the provider's token as the password, with `password_expiry_utc`
(git 2.41 and later drop the credential once it passes; older ones ignore the line). `erase` is git
saying the server refused the password: a refresh naming that token rejected, so the next command gets
a new one. `store` is git offering to save what worked: tokend has nothing to save.
"""

from __future__ import annotations

from tokend.errors import TokendError
from tokend.outputs import asking

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tokend.api.client import Client

__all__ = ["erase", "get", "parse", "unparse"]


def parse(data: bytes) -> dict[str, str]:
    """git's attributes, read exactly as git writes them: `key=value` lines each ended by LF (and only LF),
    split at the first `=`, up to a blank line or the end. A value with a control character, a key given
    twice, or a line that is not `key=value` refuses the whole request (TokendError): git writes none of
    them, so one there was smuggled in. Keys ending in `[]` (`capability[]`, `wwwauth[]`) are lists git may
    repeat; tokend reads none of them."""
    text = asking.decoded(data, "git's request")
    lines = text.split("\n")
    if lines.pop() != "":
        raise TokendError("git's request ends in a line without its line feed; refusing it")
    attributes: dict[str, str] = {}
    for line in lines:
        if not line:
            break
        key, equals, value = line.partition("=")
        asking.checked_text(line, f"git's attribute {_shown_key(key)!r}")
        if not equals or not key:
            raise TokendError(f"git's request has a line that is not key=value ({_shown_key(key)!r}); refusing it")
        if key.endswith("[]"):
            continue
        if key in attributes:
            raise TokendError(f"git's request gives {key!r} twice; refusing it")
        attributes[key] = value
    return attributes


def _shown_key(key: str) -> str:
    """A key fit for a message: at most a few characters of what may be a value, never a control character."""
    return "".join(char if char.isprintable() else "?" for char in key[:20])


def unparse(attributes: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in attributes.items())


def get(client: Client, attributes: dict[str, str], provider: str | None) -> dict[str, str] | None:
    """The credential for what git asks, or None when no provider serves that host (git asks on)."""
    name, settings = _provider(client, attributes, provider)
    if name is None:
        return None
    username = settings.get("username")
    if not username:
        raise TokendError(f"provider {name} has no git_username, the user name git must send with its token")
    answer = asking.token(client, name)
    credential = {"username": username, "password": answer["token"]}
    if answer.get("expires_at"):
        credential["password_expiry_utc"] = str(_unix_seconds(answer["expires_at"]))
    return credential


def erase(client: Client, attributes: dict[str, str], provider: str | None) -> bool:
    """A refused password: the daemon logs in again if it is still its token. False when none of ours."""
    refused = attributes.get("password")
    name, _ = _provider(client, attributes, provider)
    if name is None or not refused:
        return False
    asking.reject(client, name, refused)
    return True


def _provider(client: Client, attributes: dict[str, str], named: str | None) -> tuple[str | None, dict[str, str]]:
    """The provider named, else the one whose git_hosts lists the host, with its git settings."""
    host = attributes.get("host", "").lower()
    if (refusal := asking.plain_http_refusal(attributes.get("protocol", ""), host)) is not None:
        raise TokendError(refusal)
    readable = asking.providers(client)
    if named is not None:
        if named not in readable:
            raise TokendError(f"the daemon has no provider named {named!r} (or the client key may not read it)")
        return named, readable[named].get("git") or {}
    for name, state in readable.items():
        git = state.get("git") or {}
        if host and host in git.get("hosts", ()):
            return name, git
    return None, {}


def _unix_seconds(stamp: str) -> int:
    import calendar
    import time

    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
