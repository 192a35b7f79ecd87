"""What the credential helpers (git, Docker, kubectl) ask the daemon, through the client `tokend get` uses.

Which provider answers a host or a registry is the daemon's to say (its /status shows each provider's
git and Docker settings to the callers that may read it): the config file may be the daemon's alone to
read, and environment overrides apply there only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from urllib.parse import quote

from tokend.errors import TokendError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tokend.api.client import Client

__all__ = ["REQUEST_LIMIT", "checked_text", "decoded", "json_object", "plain_http_refusal", "providers", "reject",
           "token"]

REQUEST_LIMIT = 64 * 1024  # bytes of a tool's request read at most: git's and Docker's are a few hundred
JSON_DEPTH = 32  # arrays and objects inside one another: kubectl's ExecCredential has four
# A JSON string (skipped whole, escapes and all) or a bracket: what the depth is counted from.
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


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


def decoded(data: bytes, what: str) -> str:
    """A tool's request as text: UTF-8, within REQUEST_LIMIT, or TokendError refusing it whole."""
    if len(data) > REQUEST_LIMIT:
        raise TokendError(f"{what} is longer than {REQUEST_LIMIT} bytes; refusing it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokendError(f"{what} is not UTF-8 text; refusing it") from None


def checked_text(value: str, what: str) -> str:
    """`value`, or TokendError when it holds a control character or a line or paragraph separator. A tool
    writes none in a value; one there was smuggled in (a URL's percent-decoded user name or host) to be read
    as the end of a line by a reader less strict than the tool's own. The whole request is refused."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise TokendError(f"{what} holds the control character U+{ord(char):04X}; refusing the whole request")
    return value


def json_object(text: str, what: str, *, limit: int = REQUEST_LIMIT) -> dict[str, Any]:
    """A tool's JSON request as an object, as strictly as its line-based ones are read: within `limit`
    characters and JSON_DEPTH levels (counted before it is parsed: the parser recurses), no key given twice,
    no control character in any key or string. TokendError otherwise."""
    if len(text) > limit:
        raise TokendError(f"{what} is longer than {limit} characters; refusing it")
    depth = 0
    for match in _JSON_NESTING.finditer(text):
        bracket = match.group(0)
        depth += 1 if bracket in "[{" else -1 if bracket in "]}" else 0
        if depth > JSON_DEPTH:
            raise TokendError(f"{what} is nested more than {JSON_DEPTH} levels deep; refusing it")
    try:
        found = json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, what))
    except ValueError:
        raise TokendError(f"{what} is not JSON") from None
    if not isinstance(found, dict):
        raise TokendError(f"{what} is not a JSON object")
    _check_strings(found, what)
    return found


def _unique(pairs: list[tuple[str, Any]], what: str) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise TokendError(f"{what} gives a key twice; refusing it")
    return found


def _check_strings(value: Any, what: str) -> None:
    if isinstance(value, str):
        checked_text(value, what)
    elif isinstance(value, dict):
        for key, item in value.items():
            checked_text(key, what)
            _check_strings(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, what)


def plain_http_refusal(scheme: str, host: str) -> str | None:
    """Why a token may not go to `scheme://host` (a sentence), or None. Over plain http a token would cross
    the network readable by anyone on the way: only a loopback address (parsed, `127.0.0.0/8`, `::1`) or
    `localhost` is answered. `host` is as the tools give it, with a port or not."""
    if scheme.lower() != "http":
        return None
    if _loopback(host):
        return None
    return f"not answering for http://{host}: a token is sent over https only (or to a loopback address)"


def _loopback(host: str) -> bool:
    """`127.0.0.1:8443`, `localhost`, `[::1]:80`: the name parsed as an address (never matched by its start,
    which `127.0.0.1.example.com` shares), the port, when there is one, a number. Not config.fields' test: that
    module brings pydantic, which the helpers, started by git and Docker for every request, never import."""
    if host.startswith("["):
        end = host.find("]")
        name, port = (host[1:end], host[end + 1:]) if end > 0 else ("", "")
        if port and not port.startswith(":"):
            return False
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _json(client: Client, method: str, path: str, body: Any = None) -> Any:
    reply = client.request(method, path, body)
    if reply.status != 200:
        raise TokendError(reply.error_message())
    return reply.json()
