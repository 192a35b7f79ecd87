"""A file sink's `format = "template"`: the file other programs read, written as they want it.

    [[providers.api.sinks]]
    path = "/etc/nginx/tokend/api.conf"
    format = "template"
    template = 'proxy_set_header Authorization "{header:Authorization}";\\n'
    signal = "HUP"
    pid_file = "/run/nginx.pid"

The names are those of `GET /token`: `{token}`, `{token_type}`, `{expires_at}` (RFC 3339, empty for a key
that never expires), and `{header:NAME}` for each header a client must send (its name in any case);
`{{` and `}}` are literal braces. The rules are the `http` kind's templates' (tokend.config.templates).

A value is written only where the file's format cannot misread it. Without `escape`, each value (the token,
its type, a header) must be RFC 6750's token68 (`Bearer ` and the like before it, for a header): letters,
digits, `-._~+/` and final `=`, which no configuration or shell syntax reads as its own; any other is refused
(a sink error in /status, the file left as it was). `escape` names the format, for tokens beyond that:
`nginx` (inside a quoted string: `"`, `'` and `\\` escaped; `$`, which nginx reads as a variable and cannot
escape, and control characters refused), `json` (inside a JSON string), `shell` (a single-quoted POSIX
shell word, quotes included) or `none` (as is: the reader takes anything).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Literal

from tokend.config import templates as template
from tokend.credential import Credential, iso_utc

__all__ = ["ESCAPES", "Escape", "check", "render", "shell_quoted"]

Escape = Literal["nginx", "json", "shell", "none"]
ESCAPES: tuple[Escape, ...] = ("nginx", "json", "shell", "none")

# RFC 6750's b64token (token68 of RFC 7235), led by an auth scheme for a header value.
_TOKEN68 = re.compile(r"(?:[A-Za-z][A-Za-z0-9_-]* )?[A-Za-z0-9._~+/-]+=*")

_FIELDS = ("token", "token_type", "expires_at")
_HEADER = "header:"


def check(text: str) -> str:
    """The template, or ValueError naming what it may not name."""
    unknown = sorted(name for name in template.names(text) if name not in _FIELDS and not name.startswith(_HEADER))
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in (*_FIELDS, f"{_HEADER}NAME"))
        raise ValueError(f"template names {', '.join(unknown)}; known: {known}")
    return text


def render(text: str, credential: Credential, escape: Escape | None = None) -> bytes:
    """The file's bytes; ValueError when it names a header the credential does not have, or a value its
    format could misread (a sentence naming which value, never the value)."""
    values = {"token": _written("the token", credential.token, escape),
              "token_type": _written("the token type", credential.token_type, escape),
              "expires_at": iso_utc(credential.expires_at) or ""}  # tokend's own digits, T, : and Z
    headers = {name.lower(): value for name, value in credential.headers.items()}
    for name in template.names(text):
        if name.startswith(_HEADER):
            wanted = name.removeprefix(_HEADER)
            if wanted.lower() not in headers:
                raise ValueError(f"the template names header {wanted}, which this provider's token does not come "
                                 f"with (it has: {', '.join(credential.headers) or 'none'})")
            values[name] = _written(f"header {wanted}", headers[wanted.lower()], escape)
    return template.render(text, values).encode()


def _written(what: str, value: str, escape: Escape | None) -> str:
    """`value` as the template writes it under `escape`."""
    if escape == "none":
        return value
    if escape == "json":
        return json.dumps(value)[1:-1]
    if escape == "shell":
        return shell_quoted(value)
    if escape == "nginx":
        if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
            raise ValueError(f"{what} holds a control character, which nginx's configuration cannot carry: "
                             "not written")
        if "$" in value:
            raise ValueError(f"{what} holds a $, which nginx reads as a variable and has no escape for: not written")
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    if _TOKEN68.fullmatch(value) is None:
        raise ValueError(f"{what} holds characters outside RFC 6750's token68 (letters, digits, -._~+/ and a final "
                         "=), which the file's format could read as its own syntax: not written. If the program "
                         'reading the file takes such values, name its escaping on the sink: escape = "nginx", '
                         '"json", "shell" or "none"')
    return value


def shell_quoted(value: str) -> str:
    """`value` as a POSIX shell reads it back unchanged when the file is sourced: in single quotes, inside
    which nothing is special but the quote itself (written '\\'')."""
    if "\0" in value:
        raise ValueError("a value holds a NUL character, which no shell variable can carry")
    return "'" + value.replace("'", "'\\''") + "'"
