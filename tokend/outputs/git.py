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
    if (expiry := unix_seconds(str(answer.get("expires_at") or ""))) is not None:
        credential["password_expiry_utc"] = str(expiry)
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


def unix_seconds(stamp: str) -> int | None:
    """Seconds since 1970 of a UTC time as the daemon writes it (`2026-12-07T05:00:00Z`), None for any other
    text. Counted here rather than with time.strptime and calendar, whose imports would add about a fifth to
    the start of a helper git runs once per fetch: days from the civil date as in the proleptic Gregorian
    calendar (March-based years, so that the leap day ends a year)."""
    digits = stamp[:4] + stamp[5:7] + stamp[8:10] + stamp[11:13] + stamp[14:16] + stamp[17:19]
    if len(stamp) != 20 or stamp[4::3] != "--T::Z" or not (digits.isascii() and digits.isdigit()):
        return None
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:8])
    hour, minute, second = int(digits[8:10]), int(digits[10:12]), int(digits[12:14])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    march_year = year - (month <= 2)
    era, year_of_era = divmod(march_year, 400)
    day_of_year = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146097 + day_of_era - 719468  # 719468: days from 0000-03-01 to 1970-01-01
    return days * 86400 + hour * 3600 + minute * 60 + second
